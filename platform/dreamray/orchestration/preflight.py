"""Checks and rewrites of a train stage before any worker starts (no Ray, no model weights).

`check_train_stage` reports, all at once, what would otherwise fail minutes later inside a gang:
a missing init artifact, a data source without rows, a trainable group this model does not
have. Group membership is derived from configs, not from a built model: every DreamLLM has
parameters in every group except `lm_head` when the LLM ties its output embeddings to the input
ones (then the shared matrix belongs to `embed_tokens`; see `dreamray.model.groups`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from dreamray.config.specs import TrainStageSpec
from dreamray.contracts import BASE_SOURCE, CONFIG_FILE, STAGE_FILE, StageRef


class StageCheckError(ValueError):
    """A train stage that cannot run; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("train stage check failed:\n" + "\n".join(f"  - {p}" for p in problems))


def _init_dirs(stage: TrainStageSpec, inputs: Mapping[str, str]) -> tuple[dict, list[str]]:
    resolved, problems = {}, []
    for field in ("llm", "plugins"):
        source = getattr(stage.init, field)
        if source == BASE_SOURCE:
            continue
        ref = StageRef.parse(source)
        if ref is not None:
            if ref.name not in inputs:
                problems.append(f"init.{field}: {source} has no input artifact (inputs: "
                                f"{sorted(inputs)})")
                continue
            source = inputs[ref.name]
        if not (Path(source) / CONFIG_FILE).is_file():
            problems.append(f"init.{field}: {source} is not an artifact dir (no {CONFIG_FILE})")
        resolved[field] = source
    return resolved, problems


def resolve_init(stage: TrainStageSpec, inputs: Mapping[str, str]) -> TrainStageSpec:
    """The stage with its `stage:<name>` inits and `data.features` replaced by the inputs'
    artifact dirs.

    Raises:
        StageCheckError: on an init reference without an input.
    """
    resolved, problems = _init_dirs(stage, inputs)
    features, feature_problems = _features_dir(stage, inputs)
    problems += feature_problems
    if problems:
        raise StageCheckError(problems)
    init = stage.init.model_copy(update=resolved)
    data = stage.data.model_copy(update={"features": features})
    return stage.model_copy(update={"init": init, "data": data})


def _features_dir(stage: TrainStageSpec, inputs: Mapping[str, str]) -> tuple[str | None, list]:
    """`data.features` as the precompute artifact's dir, and what is wrong with it."""
    from dreamray.data.features import INFO_FILE

    source = stage.data.features
    if source is None:
        return None, []
    ref = StageRef.parse(source)
    if ref is not None:
        if ref.name not in inputs:
            return None, [f"data.features: {source} has no input artifact (inputs: "
                          f"{sorted(inputs)})"]
        source = inputs[ref.name]
    if not (Path(source) / INFO_FILE).is_file():
        return None, [f"data.features: {source} is not a precompute artifact (no {INFO_FILE})"]
    return source, []


def _data_problems(stage: TrainStageSpec) -> list[str]:
    from dreamray.data.mixing import index_source

    problems = []
    for i, source in enumerate(stage.data.sources):
        try:
            index_source(source.name, source.path)
        except (OSError, ValueError) as err:
            problems.append(f"data.sources.{i}: {err}")
    return problems


def _group_problems(stage: TrainStageSpec, llm_dir: str) -> list[str]:
    from transformers import AutoConfig

    if "lm_head" not in stage.trainable:
        return []
    try:
        config = AutoConfig.from_pretrained(llm_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        return [f"model: cannot read the LLM config in {llm_dir}: {err}"]
    if getattr(config, "tie_word_embeddings", False):
        return ["trainable: lm_head has no parameters of its own (the LLM ties it to "
                "embed_tokens); train embed_tokens instead"]
    return []


def check_train_stage(stage: TrainStageSpec, inputs: Mapping[str, str]) -> None:
    """Fail fast, before any worker starts, with every problem of the stage.

    Args:
        stage: the stage spec (inits may still be `stage:` references).
        inputs: stage name -> artifact dir of every stage it reads.

    Raises:
        StageCheckError: missing init artifacts, data sources without rows, empty trainable
            groups.
    """
    resolved, problems = _init_dirs(stage, inputs)
    problems += _features_dir(stage, inputs)[1]
    problems += _data_problems(stage)
    llm_dir = resolved.get("llm", stage.model.llm_path)
    if Path(llm_dir).is_dir():
        problems += _group_problems(stage, llm_dir)
    elif "llm" not in resolved:
        problems.append(f"model.llm_path: {llm_dir} does not exist")
    if problems:
        raise StageCheckError(problems)


def input_digests(inputs: Mapping[str, str]) -> dict[str, str]:
    """The artifact digest of every input (from its stage.json, else hashed now).

    Args:
        inputs: stage name -> artifact dir.

    Returns:
        stage name -> digest (`dreamray.orchestration.manifest.artifact_digest`).
    """
    from dreamray.orchestration.manifest import artifact_digest, hash_files, manifest_files

    out = {}
    for name, directory in sorted(inputs.items()):
        manifest = Path(directory) / STAGE_FILE
        files = (manifest_files(json.loads(manifest.read_text())) if manifest.is_file()
                 else hash_files(directory))
        out[name] = artifact_digest(files)
    return out
