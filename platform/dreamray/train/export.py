"""Export the trained model as an artifact dir (`DreamLLM.save_pretrained` layout).

Trainable parameters are gathered as full fp32 master weights (`safe_get_full_fp32_param`:
ZeRO 1-3 and DeepSpeed's bf16 optimizer keep them; under ZeRO-0 + fp32 the module's own
parameter is the master). Frozen parameters are not gathered: rank 0 rebuilds the stage's
starting model (same init, same seed, so bit-identical frozen weights and random-but-frozen
plugins), loads the trained tensors into it and saves. This is independent of the ZeRO stage
and of the compute precision (bf16 never rounds the exported weights), and keeps ZeRO-3
partitions on every rank until each tensor's own gather.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamray.config.specs import TrainStageSpec


class ExportError(RuntimeError):
    """The trained tensors do not fit the rebuilt model."""


def gather_trainable(engine, rank: int) -> dict[str, torch.Tensor]:
    """Full fp32 copies of every trainable parameter (collective: all ranks, same order).

    Args:
        engine: the DeepSpeed engine.
        rank: this rank; only rank 0 keeps the tensors.

    Returns:
        Parameter name -> CPU fp32 tensor on rank 0; empty on the other ranks.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        full = safe_get_full_fp32_param(param)
        if full is None:  # ZeRO-0 + fp32: no separate master copy
            full = param.detach()
        if rank == 0:
            out[name] = full.detach().float().cpu().clone()
    return out


def load_trained(model: torch.nn.Module, trained: dict[str, torch.Tensor]) -> None:
    """Copy trained tensors into a rebuilt model, checking names and shapes.

    Raises:
        ExportError: on an unknown name or a shape mismatch.
    """
    params = dict(model.named_parameters())
    unknown = sorted(set(trained) - set(params))
    bad = [n for n, t in trained.items() if n in params and params[n].shape != t.shape]
    if unknown or bad:
        raise ExportError(f"trained tensors do not fit the model: unknown {unknown}, shape {bad}")
    with torch.no_grad():
        for name, tensor in trained.items():
            params[name].copy_(tensor.to(params[name].dtype))


def export_artifact(stage: TrainStageSpec, parts, rank: int, out_dir: Path) -> Path | None:
    """Write the artifact dir on rank 0 (collective: every rank takes part in the gather).

    Args:
        stage: the stage spec (to rebuild the starting model).
        parts: the `EngineParts` of the trained engine.
        rank: this rank.
        out_dir: where rank 0 writes the artifact (created atomically by `save_pretrained`).

    Returns:
        `out_dir` on rank 0, None elsewhere.
    """
    from dreamray.train.engine import build_stage_model

    trained = gather_trainable(parts.engine, rank)
    if rank != 0:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage.seed)  # the seed the training model was built with
        model = build_stage_model(stage)
    load_trained(model, trained)
    model.save_pretrained(out_dir)
    return out_dir
