"""The precompute stage's spec, and the checks of a train stage that reads its features.

A precompute stage runs the frozen towers (CLIP vision at `vision_select_layer`, the VAE
encoder) once over its sources' shards and writes feature shards (`dreamray.data.features`); a
train stage whose `data.features` is `stage:<precompute>` reads them instead of pixels, so its
steps skip both towers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from dreamray.config.base import Spec, duplicate_names
from dreamray.config.scaling import ScalingSpec
from dreamray.contracts import BASE_SOURCE, PRECOMPUTE_KIND, StageRef

# Groups whose weights the features stand for: a stage that trains them cannot use features.
_TOWER_GROUPS = ("vision_encoder", "vae")


class FeatureSourceSpec(Spec):
    """One shard directory to precompute (the name a train stage's data source uses)."""

    name: str
    path: str


class PrecomputeSpec(Spec):
    """What to precompute, with which towers, and how it is stored."""

    vision_path: str = Field(description="HF CLIP vision directory with its image processor")
    diffusion_path: str = Field(description="diffusers SD directory (its vae/ is run)")
    vision_select_layer: int = -2
    sources: list[FeatureSourceSpec] = Field(min_length=1)
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = Field(16, ge=1, description="images per tower call")

    @model_validator(mode="after")
    def _unique_source_names(self) -> PrecomputeSpec:
        dupes = duplicate_names(s.name for s in self.sources)
        if dupes:
            raise ValueError(f"duplicate source names: {dupes}")
        return self


class PrecomputeStageSpec(Spec):
    """A frozen-tower precompute: a Ray Data actor pool over its sources' shards (`scaling`:
    one actor per worker, each holding `cpus_per_worker` and, with `use_gpu`, its GPUs)."""

    kind: Literal[PRECOMPUTE_KIND] = PRECOMPUTE_KIND
    needs: list[str] = Field(default_factory=list)
    precompute: PrecomputeSpec
    scaling: ScalingSpec = ScalingSpec()

    def input_stages(self) -> list[str]:
        """Stages whose artifacts this stage reads: none."""
        return []


def features_problems(data: Any, trainable: list[str], init_plugins: str) -> list[str]:
    """What a train stage's own spec says against reading precomputed features.

    Args:
        data: its `DataSpec`.
        trainable: its trainable groups.
        init_plugins: its `init.plugins`.

    Returns:
        One message per problem, naming the key (empty when `data.features` is unset).
    """
    if data.features is None:
        return []
    problems = []
    if data.random_flip:
        problems.append("data.features: precomputed features have no flip; set "
                        "data.random_flip: false")
    trained = [g for g in trainable if g in _TOWER_GROUPS]
    if trained:
        problems.append(f"data.features: the stage trains {trained}, whose outputs the features "
                        "stand for")
    if init_plugins != BASE_SOURCE:
        problems.append(f"data.features: init.plugins is {init_plugins!r}; features are made "
                        "from the base towers (model.vision_path / diffusion_path), so only a "
                        "stage whose plugins start from `base` can read them")
    return problems


def feature_ref_problems(stages: Mapping[str, Any]) -> list[str]:
    """Cross-stage checks: every `data.features` names a precompute stage that covers the train
    stage's sources with the same towers.

    Args:
        stages: the recipe's stages by name.

    Returns:
        One message per problem, naming the stage and key.
    """
    problems = []
    for name, stage in stages.items():
        data = getattr(stage, "data", None)
        ref = StageRef.parse(data.features) if data is not None and data.features else None
        if ref is None or ref.name not in stages:
            continue  # an unknown stage is reported by the graph check
        source = stages[ref.name]
        key = f"stages.{name}.data.features"
        if not isinstance(source, PrecomputeStageSpec):
            problems.append(f"{key}: stage {ref.name!r} is a {source.kind} stage, not precompute")
            continue
        problems += _coverage_problems(key, stage, source.precompute, ref.name)
    return problems


def _coverage_problems(key: str, stage: Any, pre: PrecomputeSpec, pre_name: str) -> list[str]:
    problems = []
    model = stage.model
    for field, mine, theirs in (
        ("model.vision_path", model.vision_path, pre.vision_path),
        ("model.diffusion_path", model.diffusion_path, pre.diffusion_path),
        ("model.vision_select_layer", model.vision_select_layer, pre.vision_select_layer),
    ):
        if mine != theirs:
            problems.append(f"{key}: {field} is {mine!r} but {pre_name} precomputes with "
                            f"{theirs!r}")
    covered = {s.name: s.path for s in pre.sources}
    for i, src in enumerate(stage.data.sources):
        if covered.get(src.name) != src.path:
            problems.append(f"{key}: data.sources.{i} ({src.name}: {src.path}) is not among "
                            f"{pre_name}'s precompute.sources")
    return problems
