"""Train overhead: the real stage launcher (Ray Train + DeepSpeed ZeRO-2, 1 worker, data through
the Ray Data pipeline, reports every --report-every steps, per-step metrics sinks) vs a bare
single-process PyTorch loop over the same model and the same pre-built batches.

The model: the tiny zoo's CLIP and SD towers with a bigger LLM (width 256, 4 layers),
sequences up to 256 tokens and micro-batch 6, so that a bare step takes 0.3-0.5 s here (the
size the issue asks for, against which per-step fixed costs are weighed). Both sides run torch on
one thread (Ray gives a 1-CPU worker OMP_NUM_THREADS=1). Steady state = wall time between the
end of step `warmup` and the end of the last step (start-up, compilation of the first steps and
the final checkpoint excluded). Prints one table.

    .venv/bin/python benchmarks/train_overhead.py [--steps 60] [--warmup 8] [--micro-batch 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGE2 = ["llm", "embed_tokens", "lm_head", "vision_projector", "dream_queries",
          "condition_projector"]


def wider_llm(src: Path, out: Path, width: int, layers: int) -> Path:
    """A random Llama of the given width/depth with the tiny zoo's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(src)
    config.hidden_size, config.intermediate_size = width, 2 * width
    config.num_hidden_layers, config.num_attention_heads = layers, 4
    config.num_key_value_heads, config.max_position_embeddings = 4, 512
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def make_stage(root: Path, zoo, llm: Path, args) -> object:
    from dreamray.config.load import load_recipe

    steps = args.steps
    overrides = {
        "root": str(root),
        "stage_defaults.model.llm_path": str(llm),
        "stage_defaults.model.vision_path": str(zoo.vision),
        "stage_defaults.model.diffusion_path": str(zoo.diffusion),
        "stage_defaults.model.max_length": 256,
        "stage_defaults.model.num_dream_queries": 32,
        "stage_defaults.deepspeed.zero_stage": 2,
        "stage_defaults.deepspeed.global_batch_size": args.micro_batch,
        "stage_defaults.deepspeed.micro_batch_per_gpu": args.micro_batch,
        "stage_defaults.checkpoint.every_n_steps": 10_000,
        "stage_defaults.checkpoint.report_every_n_steps": args.report_every,
        "stages.stage2.data.num_samples": steps * args.micro_batch,
        "stages.stage2.init": {"llm": "base", "plugins": "base"},
        "stages.stage2.needs": [],
    }
    recipe = load_recipe(REPO / "pipelines" / "recipes" / "tiny.yaml", overrides=overrides)
    return recipe.stages["stage2"]


def prebuilt_batches(stage) -> list[dict]:
    """The exact micro-batches rank 0 of the launcher will get, built once up front."""
    from dreamray.data.batches import iter_train_batches, make_collate_spec
    from dreamray.orchestration.train_data import build_rank_dataset
    from dreamray.train.run import tokenizer_dir

    ds = build_rank_dataset(stage, tokenizer_dir(stage), 0, 1)
    spec = make_collate_spec(stage, tokenizer_dir(stage))
    batches = iter_train_batches(ds.iterator(), spec, stage.deepspeed.micro_batch_per_gpu,
                                 stage.total_steps, None)
    return [b for b, _ in batches]


def bare_loop(stage, batches: list[dict]) -> list[float]:
    """Plain PyTorch: forward, backward, clip, AdamW, cosine schedule; returns step end times."""
    from dreamray.model.groups import freeze_all_but
    from dreamray.train.engine import build_stage_model
    from dreamray.train.optim import build_optimizer, build_scheduler

    torch.manual_seed(stage.seed)
    model = build_stage_model(stage)
    freeze_all_but(model, stage.trainable)
    opt = build_optimizer(model, stage.optim)
    sched = build_scheduler(opt, stage.optim, stage.total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    ends = []
    for batch in batches:
        out = model(**batch, lm_weight=stage.loss.lm, vm_weight=stage.loss.vm)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, stage.deepspeed.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        ends.append(time.time())
    return ends


def deepspeed_in_process(stage, batches: list[dict], root: Path) -> list[float]:
    """The same worker code without Ray (DeepSpeed world size 1): step end times."""
    from dreamray.train.run import RunInfo
    from dreamray.train.session import LocalSession
    from dreamray.train.telemetry import HISTORY_FILE, read_history
    from dreamray.train.worker import train_worker

    session = LocalSession(root)
    train_worker(stage, RunInfo(name="stage2", run_name="local", run_dir=str(root)), session,
                 batches=iter(batches))
    return [r["ended_at"] for r in read_history(root / HISTORY_FILE)]


def steady_rate(ends: list[float], warmup: int) -> float:
    """Steps per second between the end of step `warmup` and the end of the last step."""
    return (len(ends) - warmup) / (ends[-1] - ends[warmup - 1])


def print_table(args, tokens: float, rates: dict[str, list[float]]) -> None:
    """The markdown table: best of the rounds per loop, ratios to the best bare round."""
    labels = {"bare": "bare PyTorch (same batches)",
              "ds": "DeepSpeed ZeRO-2 in process, same batches (no Ray)",
              "ray": "Ray Train + DeepSpeed ZeRO-2 + Ray Data"}
    bare = max(rates["bare"])
    print(f"\nsteps={args.steps} warmup={args.warmup} micro_batch={args.micro_batch} "
          f"mean tokens/batch={tokens:.0f} llm=256x4 torch threads=1 "
          f"report_every_n_steps={args.report_every} rounds={args.repeats}")
    print("| loop | best steps/s | s/step | ratio to bare | all rounds steps/s |")
    print("|---|---|---|---|---|")
    for key, label in labels.items():
        best = max(rates[key])
        rounds = ", ".join(f"{r:.2f}" for r in rates[key])
        print(f"| {label} | {best:.3f} | {1 / best:.3f} | {bare / best:.2f} | {rounds} |")
    print(f"overhead: {100 * (bare / max(rates['ray']) - 1):.1f}% (target <= 15%)")


def print_ray_breakdown(steady: list[dict]) -> None:
    """Where the last Ray round's steady-state step time went."""
    mean = lambda key: sum(r[key] for r in steady) / len(steady)  # noqa: E731
    gaps = [b["ended_at"] - a["ended_at"] for a, b in zip(steady, steady[1:], strict=False)]
    print(f"Ray side per step: {mean('step_time_s'):.3f} s in the loop, of which "
          f"{mean('data_wait_s'):.3f} s waiting for data; "
          f"{sum(gaps) / len(gaps) - mean('step_time_s'):.3f} s between steps "
          f"(report, metrics sinks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=6)
    parser.add_argument("--report-every", type=int, default=10,
                        help="ray.train.report cadence; ~2 s of steps (Ray's result poll)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best of)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    import ray

    from dreamray.data.tiny import build_tiny_data
    from dreamray.evals.tiny import build_tiny_evals
    from dreamray.orchestration.launcher import run_train_stage
    from dreamray.zoo import build_tiny_zoo

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="dreamray-bench-"))
    try:
        zoo = build_tiny_zoo(root / "zoo", seed=0)
        llm = wider_llm(zoo.llm, root / "llm256", width=256, layers=4)
        build_tiny_data(root / ".cache" / "tiny" / "data", seed=0, use_ray=False)
        build_tiny_evals(root / ".cache" / "tiny" / "evals")  # the recipe's paths must exist
        stage = make_stage(root, zoo, llm, args)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        batches = prebuilt_batches(stage)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
        # Interleaved rounds, best of each: consecutive identical runs on this shared VM differ
        # by up to 15 %, and the best run is the one least disturbed by the neighbours.
        rates: dict[str, list[float]] = {"bare": [], "ds": [], "ray": []}
        for i in range(args.repeats):
            rates["bare"].append(steady_rate(bare_loop(stage, batches), args.warmup))
            local = deepspeed_in_process(stage, batches, root / f"local{i}")
            rates["ds"].append(steady_rate(local, args.warmup))
            out = run_train_stage(stage, name="stage2", storage_path=str(root / "runs"),
                                  run_name=f"bench{i}", artifact_dir=str(root / f"artifact{i}"),
                                  inputs={})
            rates["ray"].append(steady_rate([r["ended_at"] for r in out.history], args.warmup))
        print_table(args, tokens, rates)
        print_ray_breakdown(out.history[args.warmup:])
        ray.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
