"""Model + DeepSpeed engine of a train stage; the frozen towers stay outside the engine.

Frozen-tower choice: CLIP, VAE and UNet (when their groups are not trainable) are detached from
the module tree before `deepspeed.initialize` and kept as plain attributes, so attribute access
(`head.unet(...)`) still works but `parameters()`/`state_dict()` no longer see them. Every rank
holds a full replicated copy (what the reference does with FSDP `ignored_modules`); DeepSpeed
never casts, broadcasts, partitions (ZeRO-3), hooks or checkpoints them, and they never reach the
optimizer. Other frozen parameters (e.g. the LLM in stage I) stay in the engine: under ZeRO-3
they are partitioned like the rest, which is what keeps a frozen 7B LLM affordable.

DeepSpeed is imported inside the functions: the driver imports this module without it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dreamray.config.specs import TrainStageSpec
from dreamray.contracts import BASE_SOURCE
from dreamray.model.groups import PLUGIN_GROUP_PREFIXES, freeze_all_but
from dreamray.train.ds_config import deepspeed_config
from dreamray.train.loop import SkippableAdamW
from dreamray.train.optim import build_optimizer, build_scheduler

TOWER_GROUPS = ("vision_encoder", "unet", "vae")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_stage_model(stage: TrainStageSpec) -> nn.Module:
    """Build the stage's starting DreamLLM from `stage.init` (paths already concrete).

    `init.llm` / `init.plugins`: `base` = the towers of `stage.model` with fresh plugins (random
    parts from torch's global RNG: seed it identically on every rank first), or an artifact dir.

    Args:
        stage: the stage spec, with `stage:` references already replaced by directories.

    Returns:
        The fp32 model on CPU, towers frozen, in train mode.

    Raises:
        ValueError: for an LLM artifact with base plugins (no such recipe; ambiguous).
    """
    from dreamray.model.artifact import load_plugins_into
    from dreamray.model.build import build_dreamllm
    from dreamray.model.dreamllm import DreamLLM

    llm, plugins = stage.init.llm, stage.init.plugins
    if llm == BASE_SOURCE:
        model = build_dreamllm(stage.model)
        if plugins != BASE_SOURCE:
            load_plugins_into(model, plugins)
    elif plugins == BASE_SOURCE:
        raise ValueError(f"init.llm={llm!r} with init.plugins=base is not supported")
    else:
        model = DreamLLM.from_pretrained(llm, spec=stage.model)
        if plugins != llm:
            load_plugins_into(model, plugins)
    return model.train()


class DetachedTowers:
    """Frozen towers taken out of the module tree (see the module docstring)."""

    def __init__(self, model: nn.Module, groups: Iterable[str]):
        """Detach the towers of `groups` from `model`.

        Args:
            model: the DreamLLM.
            groups: tower groups to detach (frozen ones only).
        """
        self.entries: list[tuple[nn.Module, str, nn.Module]] = []
        for group in groups:
            parent_path, _, name = PLUGIN_GROUP_PREFIXES[group].rstrip(".").rpartition(".")
            parent = model.get_submodule(parent_path)
            tower = parent._modules.pop(name)
            # A plain instance attribute: found before nn.Module.__getattr__ is consulted.
            object.__setattr__(parent, name, tower)
            self.entries.append((parent, name, tower))

    @property
    def modules(self) -> list[nn.Module]:
        """The detached towers."""
        return [tower for _, _, tower in self.entries]

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move/cast the towers like DeepSpeed moves/casts the engine's module."""
        for tower in self.modules:
            tower.to(device=device, dtype=dtype)

    def reattach(self) -> None:
        """Put the towers back into the module tree (before a full save)."""
        for parent, name, tower in self.entries:
            del parent.__dict__[name]
            parent._modules[name] = tower
        self.entries = []


@dataclass
class EngineParts:
    """Everything `setup_engine` made."""

    engine: Any
    model: nn.Module
    optimizer: SkippableAdamW
    scheduler: torch.optim.lr_scheduler.LRScheduler
    towers: DetachedTowers
    device: torch.device
    dtype: torch.dtype


def frozen_tower_groups(trainable: Iterable[str]) -> list[str]:
    """Tower groups that are not trainable in this stage (kept outside the engine)."""
    wanted = set(trainable)
    return [g for g in TOWER_GROUPS if g not in wanted]


def setup_engine(
    stage: TrainStageSpec, model: nn.Module, world_size: int, device: torch.device
) -> EngineParts:
    """Freeze to the stage's groups, detach frozen towers, wrap the rest in DeepSpeed.

    Args:
        stage: the stage spec.
        model: the freshly built model (CPU, fp32).
        world_size: ranks of the gang (process group already initialised).
        device: this rank's device.

    Returns:
        The engine and its parts; the scheduler is stepped by the loop, not by DeepSpeed.

    Raises:
        ValueError: when the gang is not the declared size.
    """
    import deepspeed

    freeze_all_but(model, stage.trainable)
    towers = DetachedTowers(model, frozen_tower_groups(stage.trainable))
    dtype = DTYPES[stage.deepspeed.precision]
    towers.to(device, dtype)
    optimizer = build_optimizer(model, stage.optim, optimizer_class=SkippableAdamW)
    scheduler = build_scheduler(optimizer, stage.optim, stage.total_steps)
    if world_size != stage.scaling.num_workers:
        raise ValueError(
            f"world size {world_size} != scaling.num_workers={stage.scaling.num_workers}: the "
            "batch triple (and the data split) is planned for the declared gang"
        )
    config = deepspeed_config(
        stage.deepspeed, world_size=world_size,
        grad_accumulation_steps=stage.grad_accumulation_steps,
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return EngineParts(engine, model, optimizer, scheduler, towers, device, dtype)
