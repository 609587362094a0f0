"""A small, real stage executor for runner tests: checkpoints, resumes, writes plugin files.

`ToyTrainer` is not a stub that makes tests pass: it trains a few tensors for
`stage.total_steps` steps, checkpoints every step under the Ray Train storage path and run name
it is given, resumes from the latest checkpoint when started again with the same run name (as
Ray Train does), stops after a step when its run dir holds a preemption request (as the train
worker does), can fail once at a chosen step, and publishes an artifact in the DreamLLM
layout (plugin `.bin` files with the reference keys, config.json, tokenizer.json, stage.json)
that the real merge validates. Its bytes depend only on the spec and the inputs, like a seeded
trainer, so re-making an artifact reproduces it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamray.contracts import TRAIN_KIND
from dreamray.files import publish_dir, staging_dir
from dreamray.orchestration.context import StageContext, StageOutcome
from dreamray.orchestration.manifest import ManifestRecord, build_manifest, write_manifest
from dreamray.train.preemption import PREEMPT_FILE, clear_preemption

WIDTH, CLIP_DIM, COND_DIM = 8, 4, 6


def plugin_states(seed: int, queries: int) -> dict[str, dict[str, torch.Tensor]]:
    """The three plugin state dicts with the reference's keys, deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    return {
        "clip_vision_embedding.bin": {
            "clip_vision_model.vision_model.embeddings.patch_embedding.weight":
                torch.randn(CLIP_DIM, 3, 2, 2, generator=g),
            "projector.projector.weight": torch.randn(WIDTH, CLIP_DIM, generator=g),
            "projector.projector.bias": torch.zeros(WIDTH),
        },
        "dream_embedding.bin": {"dream_queries": torch.randn(1, queries, WIDTH, generator=g)},
        "stable_diffusion_head.bin": {
            "vae.decoder.conv_out.weight": torch.randn(3, 4, 1, 1, generator=g),
            "unet.conv_in.weight": torch.randn(4, 4, 1, 1, generator=g),
            "projector.projector.weight": torch.randn(COND_DIM, WIDTH, generator=g),
        },
    }


def write_plugin_artifact(directory: Path, seed: int, queries: int = 2) -> None:
    """Plugin files, config.json and tokenizer.json into `directory` (no stage.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename, state in plugin_states(seed, queries).items():
        torch.save(state, directory / filename)
    (directory / "config.json").write_text(json.dumps({"hidden_size": WIDTH}))
    (directory / "tokenizer.json").write_text(json.dumps({"model": "toy"}))


@dataclass(frozen=True)
class ToyTrainer:
    """A checkpointing, resumable toy trainer (see the module docstring).

    Attributes:
        step_s: seconds each step takes.
        fail_once_at: stage -> step at which the first attempt raises.
        marker_dir: where "already failed once" markers are kept.
    """

    step_s: float = 0.05
    fail_once_at: dict[str, int] = field(default_factory=dict)
    marker_dir: str = ""

    def __call__(self, stage, ctx: StageContext) -> StageOutcome:
        started = time.time()
        run_dir = Path(ctx.train_storage) / ctx.train_run_name
        clear_preemption(str(run_dir))
        step, weight = self._restore(run_dir)
        resumed_from = step
        history = []
        while step < stage.total_steps:
            self._maybe_fail(ctx.name, step)
            time.sleep(self.step_s)
            step += 1
            weight = weight * 0.9 + 0.1 * stage.optim.lr
            history.append({"step": step, "train/loss": float(1.0 / step + weight)})
            ckpt = run_dir / f"checkpoint_{step:06d}"
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "state.json").write_text(json.dumps({"step": step, "weight": weight}))
            if (run_dir / PREEMPT_FILE).is_file() and step < stage.total_steps:
                raise RuntimeError(f"preempted: stopped on request after step {step}")
        self._publish(stage, ctx, step)
        return StageOutcome(
            artifact_dir=ctx.artifact_dir, steps=step,
            samples=step * stage.deepspeed.global_batch_size,
            metrics={"train/loss": history[-1]["train/loss"] if history else 0.0,
                     "resumed_from_step": resumed_from},
            checkpoint=str(run_dir / f"checkpoint_{step:06d}"), started_at=started,
            ended_at=time.time(), history=history)

    @staticmethod
    def _restore(run_dir: Path) -> tuple[int, float]:
        found = sorted(run_dir.glob("checkpoint_*")) if run_dir.is_dir() else []
        if not found:
            return 0, 0.0
        state = json.loads((found[-1] / "state.json").read_text())
        return int(state["step"]), float(state["weight"])

    def _maybe_fail(self, name: str, step: int) -> None:
        if self.fail_once_at.get(name) != step:
            return
        marker = Path(self.marker_dir) / f"{name}.failed"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("failed once")
            raise RuntimeError(f"toy failure of {name} at step {step}")

    @staticmethod
    def _publish(stage, ctx: StageContext, step: int) -> None:
        # Seeded by the spec and the inputs, as a real seeded trainer would be.
        seed = int(ctx.spec_hash[:8], 16) ^ sum(int(d[:8], 16) for d in ctx.input_digests.values())
        tmp = staging_dir(ctx.artifact_dir)
        write_plugin_artifact(tmp, seed, queries=stage.model.num_dream_queries)
        write_manifest(tmp, build_manifest(tmp, ManifestRecord(
            stage=ctx.name, kind=TRAIN_KIND, spec_hash=ctx.spec_hash, identity=ctx.identity,
            inputs=ctx.input_digests, steps=step)))
        publish_dir(tmp, ctx.artifact_dir)
