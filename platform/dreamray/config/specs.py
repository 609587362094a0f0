"""Pydantic v2 specs of a recipe: a named DAG of train, merge and eval stages.

Every default lives here (the eval stages' in `eval_specs.py`) and nowhere else. All models are
frozen and reject unknown keys, so a typo'd key is an error rather than a silently ignored
setting.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from dreamray.config.base import Spec, duplicate_names
from dreamray.config.eval_specs import EvalSpec
from dreamray.config.precompute_specs import (
    PrecomputeStageSpec,
    feature_ref_problems,
    features_problems,
)
from dreamray.config.scaling import ScalingSpec
from dreamray.config.sweep_specs import SweptStage
from dreamray.contracts import (
    BASE_SOURCE,
    EVAL_KIND,
    GROUP_NAMES,
    MERGE_KIND,
    PRECOMPUTE_KIND,
    TRAIN_KIND,
    referenced_stages,
    stage_kind,
)


class ProjectorSpec(Spec):
    """A projector between two widths: a linear layer, or an MLP of `depth` linear layers."""

    kind: Literal["linear", "mlp"] = "linear"
    depth: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _linear_has_depth_one(self) -> ProjectorSpec:
        if self.kind == "linear" and self.depth != 1:
            raise ValueError("a linear projector has depth 1; use kind: mlp for deeper ones")
        return self


class ModelSpec(Spec):
    """Where the base towers live and how the DreamLLM around them is shaped."""

    llm_path: str = Field(description="HF causal LM directory (Vicuna-7B v1.1 in the paper)")
    vision_path: str = Field(description="HF CLIP vision directory with its image processor")
    diffusion_path: str = Field(description="diffusers SD directory with unet/, vae/, scheduler/")
    num_dream_queries: int = Field(64, ge=1)
    vision_select_layer: int = -2
    vision_projector: ProjectorSpec = ProjectorSpec()
    condition_projector: ProjectorSpec = ProjectorSpec()
    max_length: int = Field(2048, ge=16)
    gradient_checkpointing: bool = True
    condition_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="CFG condition dropout")
    snr_gamma: float | None = Field(None, gt=0.0, description="min-SNR weighting; off if null")


class InitSpec(Spec):
    """Where a train stage takes its weights: `base`, `stage:<name>` or a local artifact dir."""

    llm: str = BASE_SOURCE
    plugins: str = BASE_SOURCE

    def stage_refs(self) -> list[str]:
        """Names of the stages this init reads from."""
        return referenced_stages((self.llm, self.plugins))


class DataSourceSpec(Spec):
    """One shard directory in the unified parquet schema, with its mixing weight."""

    name: str
    path: str
    weight: float = Field(gt=0.0)


class DataSpec(Spec):
    """The stage's data: weighted sources, the pair/document mode and the epoch size."""

    sources: list[DataSourceSpec] = Field(min_length=1)
    mode: Literal["comprehension", "creation", "joint"]
    num_samples: int = Field(ge=1, description="samples in one epoch of this stage")
    seed: int = 42
    random_flip: bool = False
    max_skip_fraction: float = Field(0.05, ge=0.0, le=1.0)
    # stage II / SFT: a step's samples share rows of model.max_length (dreamray.data.packing)
    packing: bool = False
    # stage I: read a precompute stage's tower outputs instead of pixels (dreamray.data.features)
    features: str | None = Field(
        None, description="stage:<precompute stage>, or a precompute stage's artifact dir")
    map_workers_per_rank: int = Field(
        1,
        ge=1,
        description="Ray Data map actors per train worker that read, tokenise and decode its "
        "samples (one CPU each, like a DataLoader's num_workers)",
    )

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataSpec:
        dupes = duplicate_names(s.name for s in self.sources)
        if dupes:
            raise ValueError(f"duplicate source names: {dupes}")
        return self


class OptimSpec(Spec):
    """AdamW with a warmup + cosine schedule."""

    lr: float = Field(gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1.0e-8, gt=0.0)
    warmup_ratio: float = Field(0.003, ge=0.0, lt=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    max_consecutive_nan_steps: int = Field(5, ge=1)


LossNormalization = Literal["step", "micro_batch"]


class LossSpec(Spec):
    """Total loss = lm * lm_loss + vm * vm_loss.

    `normalization: step` (the default) divides the summed per-token LM loss of an optimizer
    step by the step's supervised-token count over all its micro-batches and ranks, and the
    summed per-image diffusion loss by the step's dream-image count: every token (image) weighs
    the same whatever batch it came in. `micro_batch` is the reference's behaviour (each
    micro-batch's mean, averaged over micro-batches and ranks), kept to reproduce its runs: the
    LM's effective learning rate then depends on batch composition, micro-batch size and gang
    size. Choosing `step` is a deliberate fix of the reference (docs/ARCHITECTURE.md, "Loss").
    """

    lm: float = Field(ge=0.0)
    vm: float = Field(ge=0.0)
    normalization: LossNormalization = "step"

    @model_validator(mode="after")
    def _not_both_zero(self) -> LossSpec:
        if self.lm == 0.0 and self.vm == 0.0:
            raise ValueError("at least one of lm and vm must be positive")
        return self


class DeepSpeedSpec(Spec):
    """The few DeepSpeed choices a recipe makes; `overrides` is deep-merged last."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    global_batch_size: int = Field(ge=1)
    micro_batch_per_gpu: int = Field(ge=1)
    grad_clip: float = Field(1.0, ge=0.0)
    offload_optimizer: bool = False
    offload_params: bool = False
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedSpec:
        problems = []
        if self.offload_optimizer and self.zero_stage == 0:
            problems.append("offload_optimizer needs zero_stage >= 1")
        if self.offload_params and self.zero_stage != 3:
            problems.append("offload_params needs zero_stage 3")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class CheckpointSpec(Spec):
    """How often a stage checkpoints, how many it keeps and how often it may be restarted."""

    every_n_steps: int = Field(1000, ge=1)
    keep_last: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    # `ray.train.report` cadence between checkpoints. Ray Train keeps one unconsumed report per
    # worker and its controller takes it at each health-check poll (2 s by default), so a
    # report on steps shorter than that blocks until the poll: report every ~2 s of steps.
    # TensorBoard, the JSONL history and the dreamray_* gauges get every step regardless.
    report_every_n_steps: int = Field(1, ge=1)
    # After SIGTERM the driver asks running stages to checkpoint at their next optimizer step
    # (`dreamray.train.preemption`) and waits this long (the longest over the recipe's train
    # stages) before it exits anyway.
    preemption_grace_s: float = Field(120.0, gt=0)


class TrainStageSpec(SweptStage):
    """One Ray Train + DeepSpeed stage: everything its workers need, and nothing else (its
    optional `sweep:` section, `sweep_specs.py`, makes it a Ray Tune search of such stages)."""

    kind: Literal[TRAIN_KIND] = TRAIN_KIND
    needs: list[str] = Field(default_factory=list)
    model: ModelSpec
    init: InitSpec = InitSpec()
    trainable: list[str] = Field(min_length=1)
    data: DataSpec
    optim: OptimSpec
    loss: LossSpec
    deepspeed: DeepSpeedSpec
    scaling: ScalingSpec = ScalingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    seed: int = 42

    @model_validator(mode="after")
    def _check_groups_and_batch(self) -> TrainStageSpec:
        problems = []
        unknown = [g for g in self.trainable if g not in GROUP_NAMES]
        if unknown:
            problems.append(f"trainable: unknown groups {unknown}; known: {list(GROUP_NAMES)}")
        per_step = self.deepspeed.micro_batch_per_gpu * self.scaling.num_workers
        if self.deepspeed.global_batch_size % per_step:
            problems.append(
                f"deepspeed.global_batch_size={self.deepspeed.global_batch_size} is not a "
                f"multiple of micro_batch_per_gpu x num_workers = "
                f"{self.deepspeed.micro_batch_per_gpu} x {self.scaling.num_workers}"
            )
        elif self.data.num_samples < self.deepspeed.global_batch_size:
            problems.append(
                f"data.num_samples={self.data.num_samples} is smaller than one global batch "
                f"({self.deepspeed.global_batch_size})"
            )
        problems += self._packing_problems()
        problems += features_problems(self.data, self.trainable, self.init.plugins)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _packing_problems(self) -> list[str]:
        # What the spec alone decides: a dream block. The IMG block's size needs the CLIP
        # config, checked when the data is planned (`dreamray.data.packing.stage_pack_length`).
        if not self.data.packing or self.data.mode == "comprehension":
            return []
        need = self.model.num_dream_queries + 4  # <s> <dream_start> Q x <im_patch> <dream_end> </s>
        if self.model.max_length >= need:
            return []
        return [f"model.max_length={self.model.max_length} is shorter than one sample with a "
                f"single dream block ({need} tokens for num_dream_queries="
                f"{self.model.num_dream_queries}); data.packing needs max_length >= {need}"]

    @property
    def grad_accumulation_steps(self) -> int:
        """Micro-steps per optimizer step, derived from the declared batch sizes."""
        per_step = self.deepspeed.micro_batch_per_gpu * self.scaling.num_workers
        return self.deepspeed.global_batch_size // per_step

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the stage: one epoch of `data.num_samples`, whole batches only."""
        return self.data.num_samples // self.deepspeed.global_batch_size

    @property
    def map_actors(self) -> int:
        """Ray Data map actors the stage runs beside its gang (`data.map_workers_per_rank` per
        worker)."""
        return self.data.map_workers_per_rank * self.scaling.num_workers

    def input_stages(self) -> list[str]:
        """Stages whose artifacts this stage reads."""
        return self.init.stage_refs() + referenced_stages((self.data.features or "",))


class MergeSpec(Spec):
    """Which stage each plugin file is taken from (the reference's stage-I file pick)."""

    clip_vision_embedding: str
    dream_embedding: str
    stable_diffusion_head: str

    def stage_refs(self) -> list[str]:
        """Names of the stages the merge reads from, in file order."""
        return referenced_stages(
            (self.clip_vision_embedding, self.dream_embedding, self.stable_diffusion_head)
        )


class MergeStageSpec(Spec):
    """A file-pick stage: no training, no workers."""

    kind: Literal[MERGE_KIND] = MERGE_KIND
    needs: list[str] = Field(default_factory=list)
    merge: MergeSpec

    def input_stages(self) -> list[str]:
        """Stages whose artifacts this stage reads."""
        return self.merge.stage_refs()


class EvalStageSpec(Spec):
    """An evaluation node of the DAG.

    `eval.model: base` evaluates the model every stage-I branch starts from: the base towers of
    `base_model` (the recipe's `stage_defaults.model` unless given) with fresh dream queries and
    projectors drawn under `seed`, so a report can show what training changed.
    """

    kind: Literal[EVAL_KIND] = EVAL_KIND
    needs: list[str] = Field(default_factory=list)
    eval: EvalSpec
    scaling: ScalingSpec = ScalingSpec()
    base_model: ModelSpec | None = None
    seed: int = 42

    @model_validator(mode="after")
    def _base_needs_a_model(self) -> EvalStageSpec:
        if self.eval.model == BASE_SOURCE and self.base_model is None:
            raise ValueError(
                "eval.model is `base` but there is no base_model (set stage_defaults.model or "
                "the stage's base_model)"
            )
        return self

    def input_stages(self) -> list[str]:
        """Stages whose artifacts this stage reads."""
        return referenced_stages((self.eval.model,))


def _stage_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return stage_kind(value)
    return getattr(value, "kind", None)


AnyStageSpec = TrainStageSpec | MergeStageSpec | EvalStageSpec | PrecomputeStageSpec

StageSpec = Annotated[
    Annotated[TrainStageSpec, Tag(TRAIN_KIND)]
    | Annotated[MergeStageSpec, Tag(MERGE_KIND)]
    | Annotated[EvalStageSpec, Tag(EVAL_KIND)]
    | Annotated[PrecomputeStageSpec, Tag(PRECOMPUTE_KIND)],
    Discriminator(_stage_kind),
]


class RecipeSpec(Spec):
    """A named DAG of stages; the YAML file is the graph."""

    name: str
    root: str = Field(".", description="directory that relative paths are resolved against")
    stages: dict[str, StageSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_graph(self) -> RecipeSpec:
        problems = []
        for name, stage in self.stages.items():
            for dep in stage.needs:
                if dep not in self.stages:
                    problems.append(f"stages.{name}.needs: unknown stage {dep!r}")
            for ref in stage.input_stages():
                if ref not in self.stages:
                    problems.append(f"stages.{name}: reads unknown stage {ref!r}")
                elif ref not in stage.needs:
                    problems.append(
                        f"stages.{name}: reads stage:{ref} but does not list it in needs"
                    )
        problems += feature_ref_problems(self.stages)
        if not problems:
            cycle = find_cycle({n: list(s.needs) for n, s in self.stages.items()})
            if cycle:
                problems.append(f"stages: cycle {' -> '.join(cycle)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def topological_order(self) -> list[str]:
        """Stage names so that every stage comes after the stages it needs (stable)."""
        order: list[str] = []
        placed: set[str] = set()
        while len(order) < len(self.stages):
            for name, stage in self.stages.items():
                if name not in placed and all(d in placed for d in stage.needs):
                    order.append(name)
                    placed.add(name)
        return order


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle of a dependency graph as a list of names, or None if it is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep in graph and state.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None
