"""A train stage artifact's ``README.md``: a Hugging Face model card (pure, standard library).

YAML front matter (``library_name``, ``tags``, ``base_model``), then the stage and recipe, the
models it started from, its data sources with their sample counts, and its final metrics.
Strings in the front matter are written as JSON strings, which YAML reads as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from dreamray.config.specs import TrainStageSpec
from dreamray.contracts import BASE_SOURCE, StageRef

LIBRARY_NAME = "dreamray"
TAGS = ("dreamllm", "dreamray", "multimodal", "text-to-image", "image-to-text")


def base_models(stage: TrainStageSpec, inputs: Mapping[str, str]) -> list[str]:
    """The models a stage started from: the base towers for a ``base`` init, else the artifact.

    Args:
        stage: the train stage spec (inits may be ``stage:<name>`` references).
        inputs: stage name -> artifact dir of the stages it read.

    Returns:
        Distinct sources in init order: tower paths, ``stage:<name> (<dir>)`` or a local dir.
    """
    found: list[str] = []
    for source in (stage.init.llm, stage.init.plugins):
        if source == BASE_SOURCE:
            names = [stage.model.llm_path, stage.model.vision_path, stage.model.diffusion_path]
        else:
            ref = StageRef.parse(source)
            names = [source if ref is None or ref.name not in inputs
                     else f"{source} ({inputs[ref.name]})"]
        found += [n for n in names if n not in found]
    return found


def _front_matter(bases: list[str], mode: str) -> list[str]:
    lines = ["---", f"library_name: {LIBRARY_NAME}", "tags:"]
    lines += [f"- {tag}" for tag in (*TAGS, mode)]
    lines += ["base_model:"] + [f"- {json.dumps(b)}" for b in bases] + ["---"]
    return lines


def _sources(stage: TrainStageSpec, per_source: Mapping[str, int]) -> list[str]:
    lines = ["| source | path | weight | samples trained on |", "|---|---|---|---|"]
    for source in stage.data.sources:
        count = per_source[source.name] if source.name in per_source else "not recorded"
        lines.append(f"| {source.name} | `{source.path}` | {source.weight:g} | {count} |")
    return lines


def _metric(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def model_card(
    stage: TrainStageSpec,
    name: str,
    samples: int,
    per_source: Mapping[str, int],
    metrics: Mapping[str, object],
    skipped: Mapping[str, int],
    inputs: Mapping[str, str],
    recipe: str | None = None,
) -> str:
    """The model card of a train stage's artifact.

    Args:
        stage: the stage spec.
        name: the stage's name in its recipe.
        samples: samples trained on, all ranks (`TrainState.samples_global`).
        per_source: samples trained on per source (the data state's counters; empty when the
            batches did not come from the stage's sources).
        metrics: the final step's metrics.
        skipped: samples skipped, by reason.
        inputs: stage name -> artifact dir of the stages it read.
        recipe: the recipe's name, when known.

    Returns:
        The ``README.md`` text.

    Raises:
        ValueError: a negative sample count.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    bases = base_models(stage, inputs)
    lines = _front_matter(bases, stage.data.mode)
    lines += ["", f"# dreamray stage `{name}`", ""]
    lines += [f"Recipe: `{recipe}`" if recipe else "Recipe: not recorded",
              f"Data mode: {stage.data.mode}; trainable: {', '.join(stage.trainable)}", "",
              "## Base models", ""]
    lines += [f"- `{b}`" for b in bases]
    lines += ["", "## Data", "", f"{samples} samples in all.", ""] + _sources(stage, per_source)
    if skipped:
        lines += ["", "Skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))]
    lines += ["", "## Final metrics", ""]
    lines += [f"- {k}: {_metric(v)}" for k, v in sorted(metrics.items())] or ["- none recorded"]
    return "\n".join(lines) + "\n"
