"""Helpers of the loss-normalisation tests: one optimizer step over 8 fixed samples, split into
micro-batches and ranks in different ways, with the step's gradients captured.

The samples have uneven supervised-token counts, and the last two have none (creation-only:
a dream block, every label ignored), so that a micro-batch of them carries no LM tokens. The
diffusion loss is made deterministic per image (posterior mean, noise and timestep seeded by
the image's bytes) so that gradients can be compared across layouts: the loss's randomness
otherwise depends on the order in which images are drawn.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from dreamray.model.tokens import IGNORE_INDEX

NUM_SAMPLES = 8
# (words of text, blocks, supervised): word counts spread 1..40 so micro-batch token counts differ
SAMPLE_LAYOUT = (
    (12, ("img",), True), (1, (), True), (3, ("img",), True), (6, ("drm",), True),
    (40, (), True), (2, ("img", "drm"), True), (2, ("drm",), False), (5, ("drm",), False),
)


def step_rows(model) -> list[dict]:
    """The 8 samples, each a dict of 1-D ``ids``/``labels`` and its own images."""
    tok, t = model.tokenizer, model.token_ids
    blocks = {"img": t.image_block(model.num_patches), "drm": t.dream_block(model.num_queries)}
    clip, res = model.clip_vision_embedding.image_size, model.stable_diffusion_head.resolution
    rows = []
    for i, (words, kinds, supervised) in enumerate(SAMPLE_LAYOUT):
        ids = [t.bos] + tok(" ".join(["red square"] * words), add_special_tokens=False).input_ids
        for kind in kinds:
            ids += blocks[kind]
        ids.append(t.eos)
        labels = torch.tensor(ids)
        for tid in t.unsupervised_ids():
            labels[labels == tid] = IGNORE_INDEX
        if not supervised:
            labels[:] = IGNORE_INDEX
        g = torch.Generator().manual_seed(100 + i)
        rows.append({
            "ids": torch.tensor(ids), "labels": labels,
            "clip": torch.randn(kinds.count("img"), 3, clip, clip, generator=g),
            "sd": torch.rand(kinds.count("drm"), 3, res, res, generator=g) * 2 - 1,
        })
    return rows


def collate_rows(model, rows: list[dict]) -> dict:
    """Right-padded micro-batch of `rows` in the batch contract."""
    width = max(len(r["ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), model.token_ids.pad)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        n = len(r["ids"])
        input_ids[i, :n], labels[i, :n], mask[i, :n] = r["ids"], r["labels"], 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "clip_pixel_values": torch.cat([r["clip"] for r in rows]),
            "sd_pixel_values": torch.cat([r["sd"] for r in rows])}


def rank_micro_batches(model, rank: int, world_size: int, micro: int) -> list[dict]:
    """This rank's micro-batches of the step: contiguous slices of the 8 samples."""
    rows = step_rows(model)
    per_rank = NUM_SAMPLES // world_size
    mine = rows[rank * per_rank:(rank + 1) * per_rank]
    return [collate_rows(model, mine[i:i + micro]) for i in range(0, per_rank, micro)]


def _image_seed(image: torch.Tensor) -> int:
    digest = hashlib.sha256(image.detach().float().cpu().numpy().tobytes()).digest()
    return int.from_bytes(digest[:4], "little")


def make_diffusion_deterministic(set_attr=setattr) -> None:
    """Patch the diffusion head: the posterior mean, and noise/timestep seeded per image (by
    its pixels, so the seed follows the image whatever batch it is in).

    Args:
        set_attr: `setattr`, or pytest's `monkeypatch.setattr` to undo it after the test.
    """
    from dreamray.model.diffusion import StableDiffusionHead

    original_moments = StableDiffusionHead.latent_moments

    def latent_moments(self, pixel_values):
        self._seeds = [_image_seed(img) for img in pixel_values]
        return original_moments(self, pixel_values)

    def sample_latents(self, moments):
        mean = moments.to(next(self.vae.parameters()).dtype).chunk(2, dim=1)[0]
        return mean.contiguous() * self.vae.config.scaling_factor

    def draw_noise(self, latents):
        noise, steps = [], []
        for seed, latent in zip(self._seeds, latents, strict=True):
            g = torch.Generator().manual_seed(seed)
            noise.append(torch.randn(latent.shape, generator=g).to(latent))
            steps.append(int(torch.randint(0, self.num_train_timesteps, (1,), generator=g)))
        return torch.stack(noise), torch.tensor(steps, device=latents.device)

    set_attr(StableDiffusionHead, "latent_moments", latent_moments)
    set_attr(StableDiffusionHead, "sample_latents", sample_latents)
    set_attr(StableDiffusionHead, "draw_noise", draw_noise)


def capture_step_gradients(into: list, set_attr=setattr) -> None:
    """Patch DeepSpeed's engine: at each accumulation boundary, before the update, append the
    full (gathered, rank-averaged) gradient of every trainable parameter to `into`."""
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.utils import safe_get_full_grad

    original = DeepSpeedEngine.step

    def step(self, *args, **kwargs):
        if self.is_gradient_accumulation_boundary():
            grads = {}
            for name, p in self.module.named_parameters():
                if p.requires_grad:
                    g = safe_get_full_grad(p)
                    grads[name] = None if g is None else g.detach().double().cpu().clone()
            into.append(grads)
        return original(self, *args, **kwargs)

    set_attr(DeepSpeedEngine, "step", step)


def step_stage(zoo, world_size: int, micro: int, zero_stage: int = 0,
               normalization: str = "step", checkpointing: bool = False):
    """The tiny stage2 for one 8-sample optimizer step in the given layout."""
    from train_helpers import tiny_stage

    base = tiny_stage(zoo, "stage2", checkpoint={"every_n_steps": 1000, "keep_last": 1,
                                                 "max_failures": 0})
    fields = base.model_dump()
    fields["data"]["num_samples"] = NUM_SAMPLES
    fields["deepspeed"].update(zero_stage=zero_stage, precision="fp32",
                               global_batch_size=NUM_SAMPLES, micro_batch_per_gpu=micro)
    fields["scaling"]["num_workers"] = world_size
    fields["loss"]["normalization"] = normalization
    fields["model"]["gradient_checkpointing"] = checkpointing
    return type(base).model_validate(fields)


def run_step(stage, session, zoo, set_attr=setattr) -> list[dict]:
    """Train the one step on `session`'s rank; return the captured gradients (one dict)."""
    from model_fixtures import built_model

    from dreamray.train.run import RunInfo
    from dreamray.train.worker import train_worker

    captured: list = []
    capture_step_gradients(captured, set_attr)
    make_diffusion_deterministic(set_attr)
    model = built_model(zoo)
    batches = iter(rank_micro_batches(model, session.rank, session.world_size,
                                      stage.deepspeed.micro_batch_per_gpu))
    train_worker(stage, RunInfo(name="t", run_name="t", run_dir=None), session, batches=batches)
    return captured


def rank_step_main(rank: int, world_size: int, port: int, zoo_dir: str, root: str,
                   micro: int, zero_stage: int, checkpointing: bool) -> None:
    """One rank of a spawned multi-process step; rank 0 saves the gradients to root/grads.pt."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu",
                      HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    from train_helpers import RankSession

    from dreamray.zoo import build_tiny_zoo

    zoo = build_tiny_zoo(Path(zoo_dir), seed=0)  # already built: reused
    stage = step_stage(zoo, world_size, micro, zero_stage, checkpointing=checkpointing)
    grads = run_step(stage, RankSession(root, rank, world_size), zoo)
    if rank == 0:
        torch.save(grads, Path(root) / "grads.pt")
