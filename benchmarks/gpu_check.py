"""The one script to run when a GPU is available (`make gpu-check`): four parts, one table.

1. model_step: stage-II optimizer steps of a ~1.2B-parameter DreamLLM (random init; CLIP
   ViT-L/14 and SD 2.1-base shapes from the zoo's config-only dirs) in bf16 under DeepSpeed
   ZeRO-2 with SDPA attention, through the train loop's own engine and step code
   (`dreamray.train.engine.setup_engine`, `dreamray.train.loop.optimizer_step`). Reports MFU:

       MFU = model FLOPs per step / median seconds per step / peak bf16 FLOP/s

   model FLOPs per step = tokens x (6 N + 12 n_layers L d_attn)           (LLM, trained)
                        + 6 x (patches x clip_dim x d + queries x d x cross_dim)  (projectors)
                        + images x F_clip + dream images x (F_vae_enc + 2 F_unet)  (frozen)

   N = the LLM's matmul weights (attention + MLP projections + LM head), L = row length,
   d_attn = heads x head_dim; F_x = one image's forward FLOPs through tower x, counted once by
   torch's FlopCounterMode. The frozen CLIP and VAE encoder count forward only; the UNet counts
   twice its forward, since the loss's gradient flows back through it to the condition
   (activation gradients, no weight gradients). Recomputation (gradient checkpointing) is never
   counted. Written out in `gpu_check_flops.py`. Peak: `PEAK_BF16_TFLOPS` by device name
   (H100 SXM and H200: 989 dense), or --peak-tflops.
2. generation: text-to-image img/s at 512 px, 50 DDPM steps, guidance 7.5, bf16
   (`dreamray.model.generation.generate_images`).
3. fid_features: Inception feature img/s (the `dreamllm` protocol's network, built by
   `dreamray.evals.features.build_extractor`): the network alone on the device, and files ->
   statistics through one `FeatureWorker` (decode, resize, network).
4. dag_parallel: the tiny recipe's two stage-I branches in parallel vs one after the other on a
   local Ray cluster of 16 CPUs (`benchmarks/dag_parallel.py`'s functions).

Targets on an H100: MFU >= 40 %, DAG ratio <= 0.6. Each part runs in try/except: a failure
becomes an `error` row and the next part runs. The table is also written as JSON to
``$OUT/gpu_check.json`` when OUT is set (or to --json), after every part. The last line is
``ratio: <dag ratio>``.

`--tiny` runs the same code on CPU in seconds (tiny zoo shapes, 64 px, 2 denoising steps; the
DAG part is skipped unless named in --parts): the unit test runs it so that it cannot rot.

    python benchmarks/gpu_check.py [--tiny] [--parts model_step,generation,fid_features]
        [--micro-batch 4] [--accum 2] [--seq-len 2048] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
try:
    import dreamray  # noqa: F401
except ImportError:  # a bare python3 (the device machine), where the package is not installed
    sys.path.insert(0, str(REPO / "platform"))

import gpu_check_evals as evals  # noqa: E402
import gpu_check_parts as gp  # noqa: E402
from gpu_check_report import (  # noqa: E402
    ERROR,
    SKIPPED,
    Report,
    Row,
    error_note,
    json_path_from_env,
)

PARTS = ("model_step", "generation", "fid_features", "dag_parallel")
# what a part's row is called when the part fails before measuring anything
HEADLINE = {"model_step": "MFU", "generation": "image generation",
            "fid_features": "FID features, network", "dag_parallel": "dag_parallel ratio"}
TINY_SKIPS_DAG = ("tiny mode: each Ray Train stage run starts in ~35 s here and the part runs "
                  "four; name dag_parallel in --parts to run it anyway")


def run_part(report: Report, name: str, run: Callable[[], list[Row]]) -> None:
    """Run one part: progress lines with elapsed times; an exception becomes an error row.

    The JSON is rewritten afterwards and the part's memory freed, whatever happened.

    Args:
        report: where the rows go.
        name: the part (a key of `HEADLINE`).
        run: measures and returns the part's rows.
    """
    print(f"[gpu-check {report.elapsed():6.1f} s] {name}: start", flush=True)
    start = time.perf_counter()
    try:
        rows = run()
    except Exception as err:  # noqa: BLE001 - one part's failure must not lose the others
        traceback.print_exc()
        rows = [Row(name, HEADLINE[name], None, "-", status=ERROR, note=error_note(err))]
    seconds = time.perf_counter() - start
    report.part_seconds[name] = round(seconds, 2)
    report.add(rows)
    report.write_json()
    gp.free_memory()
    status = ", ".join(f"{r.check}={r.shown_value()} {r.status}" for r in rows)
    print(f"[gpu-check {report.elapsed():6.1f} s] {name}: done in {seconds:.1f} s ({status})",
          flush=True)


def parse_settings(argv: list[str] | None) -> tuple[gp.Settings, str | None]:
    """The command line's settings; tiny defaults come from `gp.TINY_OVERRIDES`.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        ``(settings, --json path or None)``.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, seconds")
    p.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    p.add_argument("--parts", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--precision", choices=tuple(gp.DTYPES), default=None)
    p.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05 .pth")
    for name in (f.name for f in fields(gp.Settings) if f.type == "int"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--json", default=None, help="JSON path (default: $OUT/gpu_check.json)")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_parts = PARTS[:-1] if args.tiny else PARTS
    parts = tuple(args.parts.split(",")) if args.parts else default_parts
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown parts {unknown}; known: {list(PARTS)}")
    values = {**(gp.TINY_OVERRIDES if args.tiny else {}),
              **{k: v for k, v in vars(args).items() if v is not None
                 and k in gp.Settings.__dataclass_fields__
                 and k not in ("tiny", "device", "parts")}}
    return gp.Settings(tiny=args.tiny, device=device, parts=parts, **values), args.json


def main(argv: list[str] | None = None) -> Report:
    """Run the selected parts (the others become `skipped` rows) and print the table.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        The report (tests read it).
    """
    settings, json_arg = parse_settings(argv)
    # DeepSpeed picks its accelerator once, from this variable (the Makefile exports cpu)
    os.environ["DS_ACCELERATOR"] = "cuda" if settings.device.startswith("cuda") else "cpu"
    report = Report(gp.device_name(settings.device), "tiny" if settings.tiny else "full",
                    asdict(settings), json_path_from_env(json_arg))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ws = gp.Workspace(Path(tmp), settings)
        runs = {"model_step": lambda: gp.model_step_part(ws),
                "generation": lambda: gp.generation_part(ws),
                "fid_features": lambda: evals.fid_part(settings, Path(tmp) / "fid"),
                "dag_parallel": lambda: evals.dag_part(settings, Path(tmp) / "dag")}
        for name in PARTS:
            if name in settings.parts:
                run_part(report, name, runs[name])
            else:
                reason = TINY_SKIPS_DAG if settings.tiny and name == "dag_parallel" else \
                    "not in --parts"
                report.add([Row(name, HEADLINE[name], None, "-", status=SKIPPED, note=reason)])
    report.ratio = next((r.value for r in report.rows
                         if r.check == HEADLINE["dag_parallel"] and r.value is not None), None)
    report.write_json()
    report.print_table()
    return report


if __name__ == "__main__":
    main()
