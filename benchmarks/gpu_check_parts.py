"""The model-side parts of `gpu_check.py`: the stage-II model step (MFU) and image generation.

Both build a fresh random DreamLLM (`gpu_check_model`) on the run's device. The model step goes
through the train loop's own pieces: `dreamray.train.worker.init_process_group` (a process group
of one: NCCL on a GPU, gloo on the CPU), `dreamray.train.engine.setup_engine` (frozen towers
detached, DeepSpeed ZeRO-2) and `dreamray.train.loop.optimizer_step`.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import gpu_check_flops as gf
import gpu_check_model as gm
import torch
from gpu_check_report import Row, error_note, judged

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MFU_TARGET = 0.40


@dataclass(frozen=True)
class Settings:
    """What the parts run (full-mode defaults fit one H100 in under 8 minutes)."""

    tiny: bool
    device: str
    parts: tuple[str, ...]
    precision: str = "bf16"
    micro_batch: int = 4
    accum: int = 2
    seq_len: int = 2048
    images_per_row: int = 2
    warmup_steps: int = 3
    steps: int = 5
    gradient_checkpointing: bool = False
    peak_tflops: float | None = None
    gen_batch: int = 8
    gen_batches: int = 2
    gen_steps: int = 50
    guidance: float = 7.5
    fid_images: int = 256
    fid_batch: int = 64
    fid_network_batches: int = 5
    inception_weights: str | None = None
    dag_cpus: int = 16
    dag_samples: int = 400
    dag_checkpoint_every: int = 25


# fp32 on CPU: bf16 convolutions there are ~50x slower (the VAE encoder: 3.2 s vs 0.06 s)
TINY_OVERRIDES = {
    "precision": "fp32", "micro_batch": 2, "accum": 1, "seq_len": 96, "images_per_row": 2,
    "warmup_steps": 1, "steps": 2, "gen_batch": 2, "gen_batches": 1, "gen_steps": 2,
    "fid_images": 2, "fid_batch": 2, "fid_network_batches": 1, "dag_cpus": 2, "dag_samples": 16,
    "dag_checkpoint_every": 2,
}


class Workspace:
    """Files the parts share, made on first use: tower config dirs and the tokenizer."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root, self.settings = root, settings

    @cached_property
    def towers(self) -> gm.TowerDirs:
        """The towers' config-only dirs."""
        return gm.write_tower_dirs(self.root / "towers", self.settings.tiny)

    @cached_property
    def tokenizer(self):
        """The benchmark tokenizer (with DreamLLM's tokens)."""
        return gm.benchmark_tokenizer(self.root / "tokenizer")

    def model_spec(self, gradient_checkpointing: bool):
        """The `ModelSpec` of the benchmark model (tower paths = the config dirs).

        Args:
            gradient_checkpointing: recompute the LLM's layers in backward.

        Returns:
            The spec (its llm_path is the tokenizer's dir: the LLM is built from a config).
        """
        from dreamray.config.specs import ModelSpec

        return ModelSpec(llm_path=str(self.root / "tokenizer"), vision_path=str(self.towers.vision),
                         diffusion_path=str(self.towers.diffusion),
                         num_dream_queries=gm.dream_queries(self.settings.tiny),
                         max_length=self.settings.seq_len,
                         gradient_checkpointing=gradient_checkpointing)

    def build_model(self, gradient_checkpointing: bool = False):
        """A fresh random DreamLLM on the device (fp32, seed 0).

        Args:
            gradient_checkpointing: recompute the LLM's layers in backward.

        Returns:
            ``(model, the LLM's config)``.
        """
        config = gm.llm_config(self.tokenizer, self.settings.tiny)
        torch.manual_seed(0)
        spec = self.model_spec(gradient_checkpointing)
        return gm.build_random_dreamllm(spec, config, self.tokenizer,
                                        torch.device(self.settings.device)), config


def sync(device: str) -> None:
    """Wait for the device's queued work (timings end here).

    Args:
        device: ``cuda...`` or ``cpu``.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stage2_spec(ws: Workspace, micro_batch: int):
    """The tiny recipe's stage II, re-shaped: this model, ZeRO-2, bf16, one worker."""
    from dreamray.config.load import load_recipe
    from dreamray.config.specs import TrainStageSpec

    s = ws.settings
    stage = load_recipe(REPO / "pipelines/recipes/tiny.yaml", check_paths=False).stages["stage2"]
    global_batch = micro_batch * s.accum
    values = stage.model_dump()
    values.update(
        model=ws.model_spec(s.gradient_checkpointing).model_dump(), needs=[],
        init={"llm": "base", "plugins": "base"},
        deepspeed={**values["deepspeed"], "zero_stage": 2, "precision": s.precision,
                   "global_batch_size": global_batch, "micro_batch_per_gpu": micro_batch},
        scaling={**values["scaling"], "num_workers": 1, "use_gpu": s.device.startswith("cuda")},
        data={**values["data"], "num_samples": global_batch * (s.warmup_steps + s.steps)},
    )
    return TrainStageSpec.model_validate(values)


def _timed_steps(parts, stage, batch: dict, s: Settings) -> tuple[list[float], list]:
    """Optimizer steps through the train loop's `optimizer_step`: (timed seconds, metrics)."""
    from dreamray.train.loop import LoopContext, optimizer_step, to_device
    from dreamray.train.state import TrainState

    ctx = LoopContext(engine=parts.engine, optimizer=parts.optimizer, scheduler=parts.scheduler,
                      accum=stage.grad_accumulation_steps, lm_weight=stage.loss.lm,
                      vm_weight=stage.loss.vm, max_consecutive_nan=1 << 30,
                      device=parts.device, world_size=1, compute_dtype=parts.dtype)
    # the batch goes to the device once: the step is measured, not the host-to-device copy
    batches = itertools.repeat(to_device(batch, parts.device, parts.dtype))
    state, seconds, metrics = TrainState(), [], []
    ctx.engine.train()
    for i in range(s.warmup_steps + s.steps):
        sync(s.device)
        start = time.perf_counter()
        step = optimizer_step(ctx, batches, state)
        sync(s.device)
        if i >= s.warmup_steps:
            seconds.append(time.perf_counter() - start)
            metrics.append(step)
    return seconds, metrics


def _measure_model_step(ws: Workspace, micro_batch: int) -> tuple:
    """Build, count FLOPs, set up the engine and time the steps at one micro-batch size.

    Returns:
        ``(StepFlops, TowerFlops, timed seconds per step, StepMetrics of the timed steps)``.
    """
    from dreamray.train.engine import setup_engine
    from dreamray.train.worker import init_process_group

    s = ws.settings
    stage = _stage2_spec(ws, micro_batch)
    init_process_group(stage)
    model, config = ws.build_model(s.gradient_checkpointing)
    batch = gm.make_stage2_batch(model, micro_batch, s.seq_len, s.images_per_row)
    towers = gf.tower_forward_flops(model)
    flops = gf.stage2_step_flops(model, config, batch, s.accum, towers)
    parts = setup_engine(stage, model, 1, torch.device(s.device))
    try:
        seconds, metrics = _timed_steps(parts, stage, batch, s)
    finally:
        parts.engine.destroy()
    return flops, towers, seconds, metrics


def model_step_part(ws: Workspace) -> list[Row]:
    """MFU of stage-II steps; on CUDA out-of-memory, once more at half the micro-batch.

    Args:
        ws: the run's workspace (settings, tower dirs, tokenizer).

    Returns:
        MFU (judged against `MFU_TARGET` in full mode), step time, tokens/s, FLOPs per token.
    """
    s = ws.settings
    micro_batch, notes, measured = s.micro_batch, [], None
    try:
        measured = _measure_model_step(ws, micro_batch)
    except torch.cuda.OutOfMemoryError as err:
        notes.append(f"micro-batch {micro_batch}: {error_note(err)[:80]}")
    if measured is None:
        # outside the except block: its traceback no longer holds the failed try's model
        free_memory()
        micro_batch = max(1, micro_batch // 2)
        measured = _measure_model_step(ws, micro_batch)
    return _model_step_rows(s, micro_batch, *measured, notes)


def _model_step_rows(s: Settings, micro_batch: int, flops: gf.StepFlops, towers: gf.TowerFlops,
                    seconds: list[float], metrics: list, notes: list[str]) -> list[Row]:
    """The model step's rows: MFU (against the target), step time, tokens/s, FLOPs/token."""
    step_s = sorted(seconds)[len(seconds) // 2]
    peak = s.peak_tflops or (gf.peak_bf16_tflops(device_name(s.device))
                             if s.device.startswith("cuda") else None)
    origin = "--peak-tflops" if s.peak_tflops else "the peak table"
    mfu = None if peak is None else flops.total / step_s / (peak * 1e12)
    shape = (f"{s.precision}, micro-batch {micro_batch} x accum {s.accum} x {s.seq_len} tokens, "
             f"{s.images_per_row} images/row, grad ckpt {s.gradient_checkpointing}")
    memory = (f"; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
              if s.device.startswith("cuda") else "")
    nan_steps = sum(m.nan_skipped for m in metrics)
    peak_note = f"peak {peak:g} TFLOP/s ({origin})" if peak else \
        "no peak known for this device: pass --peak-tflops"
    mfu_note = "; ".join([*notes, shape + memory, f"non-finite steps {nan_steps}", peak_note])
    details = {**asdict(flops), "total_flops_per_step": flops.total, "step_s": step_s,
               "peak_tflops": peak, "steps_s": seconds, "micro_batch": micro_batch,
               "tower_forward_flops_per_image": asdict(towers)}
    part = "model_step"
    return [
        Row(part, "MFU", None if mfu is None else 100 * mfu, "%", f">= {100 * MFU_TARGET:.0f}",
            judged(mfu is not None and mfu >= MFU_TARGET, not s.tiny and mfu is not None),
            mfu_note, details),
        Row(part, "seconds per optimizer step (median)", step_s, "s",
            note=f"{len(seconds)} timed after {s.warmup_steps} warm-up"),
        Row(part, "tokens/s", flops.tokens / step_s, "tok/s"),
        Row(part, "model FLOPs per token", flops.per_token, "FLOP",
            note=f"LLM {flops.llm / flops.total:.0%}, UNet {flops.unet / flops.total:.0%}, "
                 f"VAE enc {flops.vae_encoder / flops.total:.0%}, "
                 f"CLIP {flops.clip / flops.total:.0%}"),
    ]


def generation_part(ws: Workspace) -> list[Row]:
    """Text-to-image img/s with classifier-free guidance, after one 2-step warm-up batch.

    Args:
        ws: the run's workspace.

    Returns:
        One row: images per second at the head's resolution.
    """
    from dreamray.model.generation import generate_images

    s = ws.settings
    model, _ = ws.build_model()
    model = model.to(DTYPES[s.precision]).eval()
    res = model.stable_diffusion_head.resolution
    prompts = [f"a small red boat near the beach, number {i}" for i in range(s.gen_batch)]
    generate_images(model, prompts, guidance_scale=s.guidance, num_inference_steps=2, seed=0)
    sync(s.device)
    start = time.perf_counter()
    for b in range(s.gen_batches):
        images = generate_images(model, prompts, guidance_scale=s.guidance,
                                 num_inference_steps=s.gen_steps,
                                 seed=[b * s.gen_batch + i for i in range(s.gen_batch)])
    sync(s.device)
    seconds = time.perf_counter() - start
    n = s.gen_batch * s.gen_batches
    check = f"image generation ({res} px, {s.gen_steps} DDPM steps, guidance {s.guidance})"
    return [Row("generation", check, n / seconds, "img/s",
                note=f"{n} images in batches of {s.gen_batch}, {seconds:.1f} s, {s.precision}, "
                     f"image size {images[0].size}",
                details={"images": n, "seconds": seconds, "resolution": res})]


def device_name(device: str) -> str:
    """What the table calls the device.

    Args:
        device: ``cuda...`` or ``cpu``.

    Returns:
        The GPU's name, or ``cpu (N cores)``.
    """
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores)"


def free_memory() -> None:
    """Drop what the last part left behind (its engine, models, cached blocks)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
