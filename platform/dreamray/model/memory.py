"""Parameter counts and per-GPU model-state memory of a train stage, planned on the meta device.

What lives where (mirrors `dreamray.train.engine`): frozen towers (CLIP, UNet, VAE unless a stage
trains them) are outside the DeepSpeed engine, replicated on every GPU in the compute dtype, with
no gradients or optimizer state. Inside the engine, trainable parameters carry 16-bit (or fp32)
params and grads plus DeepSpeed's fp32 optimizer partition, and frozen ones (e.g. the LLM in
stage I) carry params only; ZeRO partitions them over the world size as below.

Bytes per parameter, N params, W ranks, b = 2 (bf16/fp16) or 4 (fp32):

| ZeRO | params   | grads    | optimizer (fp32 master 4 + fp32 grad 4 + Adam m 4 + v 4) |
|------|----------|----------|------------------------------------------------------------|
| 0    | b N      | b N      | 16 N (fp32: 8 N, Adam m + v only: there is no copy)          |
| 1    | b N      | b N      | 16 N / W                                                   |
| 2    | b N      | b N / W  | 16 N / W                                                   |
| 3    | b N / W  | b N / W  | 16 N / W, plus the gathered largest layer: 2 b L           |

ZeRO 1-3 keep the fp32 partition even in fp32 runs (DeepSpeed clones it). ZeRO-2 equals
DeepSpeed's ``estimate_zero2_model_states_mem_needs`` (2N + 18N/W for b = 2); for ZeRO-3
DeepSpeed's estimator (4L + 18N/W) leaves out the 16-bit gradient partition (its
``grad_partitions_flat_buffer``) that we count, 2N/W. Offload: ``offload_optimizer`` moves the
optimizer column (and ZeRO-2/3's grads, reduced straight into the CPU partition) to CPU;
``offload_params`` (ZeRO-3) moves the param partition. Activations, communication buckets
and the CUDA context are not included.

`build_dreamllm_on_meta` builds the real architecture from config-only dirs (no weights), e.g.
those of `dreamray.zoo.build_real_configs`; `describe_stage_plan` gives the dry run's lines
(`dreamray.orchestration.plan`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from dreamray.config.specs import DeepSpeedSpec, ModelSpec, TrainStageSpec
from dreamray.model.groups import GROUP_NAMES, group_of, llm_group_prefixes, parameters_by_group
from dreamray.model.meta import build_dreamllm_on_meta

# frozen tower groups that the train engine keeps outside DeepSpeed (dreamray.train.engine)
TOWER_GROUPS: tuple[str, ...] = ("vision_encoder", "unet", "vae")
COMPUTE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
FP32_OPTIMIZER_BYTES = 16  # master 4 + fp32 grad 4 + Adam m 4 + v 4
PLAIN_ADAM_BYTES = 8  # ZeRO-0 in fp32: Adam m + v next to the params themselves
GIB = float(1 << 30)
REAL_CONFIGS_SOURCE = "real 7B configs (dreamray.zoo.build_real_configs)"
_W = 28  # label column of the table


@dataclass(frozen=True)
class StateBytes:
    """Per-GPU bytes of one part's model states, and what offload puts in CPU memory."""

    params: float
    grads: float
    optimizer: float
    cpu: float = 0.0

    @property
    def gpu(self) -> float:
        """GPU bytes: params + grads + optimizer."""
        return self.params + self.grads + self.optimizer


def trainable_state_bytes(n: int, spec: DeepSpeedSpec, world_size: int) -> StateBytes:
    """Per-GPU bytes of `n` trainable engine parameters (the table in the module docstring).

    Args:
        n: trainable parameters.
        spec: ZeRO stage, precision and offload flags.
        world_size: data-parallel ranks.

    Returns:
        The per-GPU bytes (and CPU bytes per rank under offload).
    """
    b, z, w = COMPUTE_BYTES[spec.precision], spec.zero_stage, world_size
    params = b * n / w if z == 3 else float(b * n)
    grads = b * n / w if z >= 2 else float(b * n)
    if z == 0:
        per_param = PLAIN_ADAM_BYTES if spec.precision == "fp32" else FP32_OPTIMIZER_BYTES
        optimizer = float(per_param * n)
    else:
        optimizer = FP32_OPTIMIZER_BYTES * n / w
    cpu = 0.0
    if spec.offload_optimizer:
        cpu, optimizer = optimizer, 0.0
        if z >= 2:
            grads = 0.0  # reduced into the CPU fp32 gradient partition, bucket by bucket
    if spec.offload_params:
        cpu, params = cpu + params, 0.0
    return StateBytes(params, grads, optimizer, cpu)


def frozen_state_bytes(n: int, spec: DeepSpeedSpec, world_size: int) -> StateBytes:
    """Per-GPU bytes of `n` frozen parameters inside the engine: params only, ZeRO-3 shards them.

    Args:
        n: frozen engine parameters.
        spec: ZeRO stage, precision and offload flags.
        world_size: data-parallel ranks.

    Returns:
        The per-GPU bytes.
    """
    b = COMPUTE_BYTES[spec.precision]
    if spec.zero_stage != 3:
        return StateBytes(float(b * n), 0.0, 0.0)
    if spec.offload_params:
        return StateBytes(0.0, 0.0, 0.0, cpu=b * n / world_size)
    return StateBytes(b * n / world_size, 0.0, 0.0)


@dataclass(frozen=True)
class ModelCounts:
    """Parameters per group, and per group the largest number held directly by one module."""

    by_group: dict[str, int]
    largest_layer: dict[str, int]


def count_model(model: torch.nn.Module) -> ModelCounts:
    """Count a DreamLLM's parameters (real or on the meta device) per group.

    Args:
        model: a `DreamLLM`.

    Returns:
        The counts over all of `GROUP_NAMES`.
    """
    by_group = {g: sum(p.numel() for _, p in ps) for g, ps in parameters_by_group(model).items()}
    prefixes = llm_group_prefixes(model)
    largest = dict.fromkeys(GROUP_NAMES, 0)
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if own:
            group = group_of(f"{name}.{own[0][0]}", prefixes)
            largest[group] = max(largest[group], sum(p.numel() for _, p in own))
    return ModelCounts(by_group, largest)


@dataclass(frozen=True)
class MemoryPlan:
    """Parameter counts and per-GPU model-state bytes of one train stage."""

    counts: ModelCounts
    trainable_groups: tuple[str, ...]
    deepspeed: DeepSpeedSpec
    world_size: int
    source: str

    @property
    def tower_groups(self) -> tuple[str, ...]:
        """Frozen towers kept outside the engine (replicated, compute dtype)."""
        return tuple(g for g in TOWER_GROUPS if g not in self.trainable_groups)

    @property
    def engine_frozen_groups(self) -> tuple[str, ...]:
        """Frozen groups that stay in the engine (ZeRO-3 partitions them)."""
        skip = set(self.trainable_groups) | set(self.tower_groups)
        return tuple(g for g in GROUP_NAMES if g not in skip)

    @property
    def trainable_counts(self) -> dict[str, int]:
        """Trainable parameters per trainable group."""
        return {g: self.counts.by_group[g] for g in self.trainable_groups}

    def _count(self, groups: Iterable[str]) -> int:
        return sum(self.counts.by_group[g] for g in groups)

    def parts(self) -> dict[str, tuple[int, StateBytes]]:
        """``{part: (parameters, per-GPU bytes)}`` for trainable, frozen-in-engine and towers."""
        spec, w = self.deepspeed, self.world_size
        n_train = self._count(self.trainable_groups)
        n_frozen = self._count(self.engine_frozen_groups)
        n_towers = self._count(self.tower_groups)
        b = COMPUTE_BYTES[spec.precision]
        return {
            "trainable": (n_train, trainable_state_bytes(n_train, spec, w)),
            "frozen in engine": (n_frozen, frozen_state_bytes(n_frozen, spec, w)),
            "frozen towers": (n_towers, StateBytes(float(b * n_towers), 0.0, 0.0)),
        }

    @property
    def gathered_bytes(self) -> float:
        """ZeRO-3's working set: the largest engine layer gathered, 16-bit params + grads."""
        if self.deepspeed.zero_stage != 3:
            return 0.0
        engine = [*self.trainable_groups, *self.engine_frozen_groups]
        largest = max(self.counts.largest_layer[g] for g in engine)
        return 2.0 * COMPUTE_BYTES[self.deepspeed.precision] * largest

    @property
    def per_gpu_bytes(self) -> float:
        """Model states on one GPU: every part plus ZeRO-3's gathered layer."""
        return sum(s.gpu for _, s in self.parts().values()) + self.gathered_bytes

    @property
    def cpu_bytes(self) -> float:
        """What offload keeps in CPU memory, per rank."""
        return sum(s.cpu for _, s in self.parts().values())

    def table(self) -> str:
        """A printable table: counts per group, then per-GPU GiB per part."""
        ds = self.deepspeed
        offload = [k for k in ("offload_optimizer", "offload_params") if getattr(ds, k)]
        lines = [
            f"ZeRO-{ds.zero_stage} {ds.precision}, {self.world_size} GPUs"
            + (f", {'+'.join(offload)}" if offload else "")
            + f"; shapes from {self.source}",
            f"{'group':<{_W}}{'params':>16}  role",
        ]
        for group in GROUP_NAMES:
            n = self.counts.by_group[group]
            if n:
                lines.append(f"{group:<{_W}}{n:>16,}  {self._role(group)}")
        total = sum(self.counts.by_group.values())
        lines.append(f"{'total':<{_W}}{total:>16,}")
        lines.append(
            f"{'per GPU (GiB)':<{_W}}{'params':>9}{'grads':>9}{'optim':>9}{'total':>9}{'cpu':>9}"
        )
        for part, (n, s) in self.parts().items():
            label = f"{part} ({n / 1e9:.3f}B)"
            cells = (s.params, s.grads, s.optimizer, s.gpu, s.cpu)
            lines.append(f"{label:<{_W}}" + "".join(f"{c / GIB:>9.2f}" for c in cells))
        if self.gathered_bytes:
            gathered = self.gathered_bytes / GIB
            lines.append(f"{'ZeRO-3 gathered layer':<{_W}}{'':>27}{gathered:>9.2f}")
        lines.append(
            f"{'model states':<{_W}}{'':>27}{self.per_gpu_bytes / GIB:>9.2f}"
            f"{self.cpu_bytes / GIB:>9.2f}  (activations, buckets, CUDA context not included)"
        )
        return "\n".join(lines)

    def _role(self, group: str) -> str:
        if group in self.trainable_groups:
            return "trainable"
        if group in self.tower_groups:
            return "frozen tower (replicated)"
        return "frozen, in engine"


def plan_memory(
    counts: ModelCounts,
    trainable: Iterable[str],
    deepspeed: DeepSpeedSpec,
    world_size: int,
    source: str = "model",
) -> MemoryPlan:
    """The memory plan of given counts (pure arithmetic).

    Args:
        counts: from `count_model`.
        trainable: trainable group names.
        deepspeed: ZeRO stage, precision, offload.
        world_size: data-parallel ranks.
        source: where the shapes came from (printed in the table).

    Returns:
        The plan.

    Raises:
        ValueError: on an unknown group or a world size < 1.
    """
    groups = tuple(trainable)
    unknown = [g for g in groups if g not in GROUP_NAMES]
    if unknown or world_size < 1:
        raise ValueError(f"unknown groups {unknown} or world_size {world_size} < 1")
    return MemoryPlan(counts, groups, deepspeed, world_size, source)


@lru_cache(maxsize=8)
def _counts(llm: str, vision: str, diffusion: str, spec: ModelSpec) -> ModelCounts:
    return count_model(build_dreamllm_on_meta(llm, vision, diffusion, spec))


def plan_stage_memory(stage: TrainStageSpec, shapes_only_dirs=None) -> MemoryPlan:
    """The memory plan of a train stage at its declared scaling and DeepSpeed settings.

    Args:
        stage: the stage spec.
        shapes_only_dirs: a `dreamray.zoo.ZooPaths` of config-only dirs to take the towers from
            (e.g. `build_real_configs`); None reads the configs at the stage's model paths.

    Returns:
        The plan (counts are cached per dirs and model spec).
    """
    model = stage.model
    dirs = shapes_only_dirs
    llm, vision, diffusion = (
        (model.llm_path, model.vision_path, model.diffusion_path)
        if dirs is None
        else (str(dirs.llm), str(dirs.vision), str(dirs.diffusion))
    )
    counts = _counts(llm, vision, diffusion, model)
    source = "the recipe's model dirs" if dirs is None else f"config-only dirs {Path(llm).parent}"
    return plan_memory(
        counts, stage.trainable, stage.deepspeed, stage.scaling.num_workers, source=source
    )


@lru_cache(maxsize=1)
def real_config_dirs():
    """`build_real_configs` into a temp dir, once per process (config files only, ~100 KB)."""
    from dreamray.zoo import build_real_configs

    return build_real_configs(Path(tempfile.mkdtemp(prefix="dreamray-real-configs-")))


def describe_stage_plan(stage: TrainStageSpec, shapes_only: bool) -> list[str]:
    """The dry run's lines for a train stage (`dreamray.orchestration.plan.describe_recipe`).

    Args:
        stage: the stage spec.
        shapes_only: plan the real 7B towers from config-only dirs (no model dirs needed);
            otherwise read the configs at the stage's model paths.

    Returns:
        Lines: a header, then the table; or one line saying why no plan could be made.
    """
    try:
        plan = plan_stage_memory(stage, real_config_dirs() if shapes_only else None)
        if shapes_only:  # a temp dir name says nothing: name the configs instead
            plan = dataclasses.replace(plan, source=REAL_CONFIGS_SOURCE)
    except (OSError, ValueError) as err:
        return [f"params / memory plan: not available ({type(err).__name__}: {err})"]
    header = "params / memory plan: meta device, no weights read"
    return [header, *(f"  {line}" for line in plan.table().splitlines())]
