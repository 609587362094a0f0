"""Load a recipe YAML: defaults merge, dotted overrides, validation, path checks.

Every problem of a recipe is collected and raised together in one `RecipeError` whose lines
each start with the key path at fault, before anything asks Ray for resources.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dreamray.config.precompute_specs import PrecomputeStageSpec
from dreamray.config.specs import MergeStageSpec, RecipeSpec, TrainStageSpec, find_cycle
from dreamray.contracts import (
    BASE_SOURCE,
    EVAL_KIND,
    MERGE_KIND,
    PRECOMPUTE_KIND,
    TRAIN_KIND,
    is_stage_ref,
    stage_kind,
)

STAGE_DEFAULTS_KEY = "stage_defaults"
# what a precompute stage takes from `stage_defaults.model` where it does not set them
PRECOMPUTE_TOWER_FIELDS = ("vision_path", "diffusion_path", "vision_select_layer")
STAGE_KINDS = (TRAIN_KIND, MERGE_KIND, EVAL_KIND, PRECOMPUTE_KIND)


class RecipeError(ValueError):
    """A recipe that cannot run; `problems` holds one `key.path: message` line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{listing}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse `a.b.c=value` strings; values are read as YAML scalars (`2.0e-3`, `true`, `[a]`).

    Args:
        items: override strings as given on a command line.

    Returns:
        A mapping of dotted key path to parsed value.

    Raises:
        RecipeError: if an item has no `=` or an empty key.
    """
    parsed, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r}: expected key.path=value")
            continue
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    if problems:
        raise RecipeError("command line", problems)
    return parsed


def load_recipe(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    check_paths: bool = True,
) -> RecipeSpec:
    """Read, merge, override, validate and resolve a recipe YAML.

    Args:
        path: the recipe YAML file.
        overrides: dotted key paths to values, applied before validation.
        check_paths: also require every local model and data path to exist.

    Returns:
        The validated recipe with every relative path made absolute against `root`.

    Raises:
        RecipeError: listing every problem with its key path.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(str(path), [f"cannot read recipe: {err}"]) from err
    if not isinstance(raw, dict):
        raise RecipeError(str(path), ["the recipe must be a mapping at the top level"])
    raw = apply_overrides(raw, overrides or {})
    raw = merge_stage_defaults(raw)
    problems = raw_graph_problems(raw)
    try:
        recipe = RecipeSpec.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(str(path), problems + format_validation_errors(err)) from None
    if problems:
        raise RecipeError(str(path), problems)
    recipe = resolve_paths(recipe)
    if check_paths:
        missing = [f"{key}: path does not exist: {p}" for key, p in local_paths(recipe)
                   if not Path(p).exists()]
        if missing:
            raise RecipeError(str(path), missing)
    return recipe


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted key set to its value.

    Missing mappings on the way are created; an integer part indexes into a list
    (`stages.sft.data.sources.0.weight`).
    """
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node: Any = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = _child(node, key)
        if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
            node[int(leaf)] = value
        elif isinstance(node, dict):
            node[leaf] = value
    return out


def _child(node: Any, key: str) -> Any:
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    if not isinstance(node, dict):
        return {}  # the key path runs through a scalar: validation reports the bad value
    if not isinstance(node.get(key), (dict, list)):
        node[key] = {}
    return node[key]


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Merge `top` into a copy of `base`; mappings merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_stage_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `stage_defaults` under every train stage, then drop the key. An eval of the
    base model (`eval.model: base`) takes the defaults' `model` and `seed` as its `base_model`
    and `seed`, where it does not set them: the starting point of the train stages. A
    precompute stage takes the defaults' towers (PRECOMPUTE_TOWER_FIELDS of `model`)."""
    out = dict(raw)
    defaults = out.pop(STAGE_DEFAULTS_KEY, None) or {}
    stages = out.get("stages")
    if not isinstance(defaults, dict) or not isinstance(stages, dict):
        return out
    out["stages"] = {name: _with_defaults(stage, defaults) for name, stage in stages.items()}
    return out


def _with_defaults(stage: Any, defaults: dict[str, Any]) -> Any:
    if not isinstance(stage, dict):
        return stage
    kind = stage_kind(stage)
    if kind == TRAIN_KIND:
        return deep_merge(defaults, stage)
    evaluated = stage.get("eval")
    if kind == EVAL_KIND and isinstance(evaluated, dict) and evaluated.get("model") == BASE_SOURCE:
        renamed = {"model": "base_model", "seed": "seed"}
        base = {renamed[k]: v for k, v in defaults.items() if k in renamed}
        return deep_merge(base, stage)
    if kind == PRECOMPUTE_KIND and isinstance(stage.get("precompute"), dict):
        model = defaults.get("model") if isinstance(defaults.get("model"), dict) else {}
        towers = {k: v for k, v in model.items() if k in PRECOMPUTE_TOWER_FIELDS}
        return deep_merge({"precompute": towers}, stage)
    return stage


def raw_graph_problems(raw: dict[str, Any]) -> list[str]:
    """Unknown `needs` and cycles, found on the raw mapping so they are reported with
    field errors of the same recipe rather than after them."""
    stages = raw.get("stages")
    if not isinstance(stages, dict):
        return []
    graph = {}
    problems = []
    for name, stage in stages.items():
        needs = stage.get("needs", []) if isinstance(stage, dict) else []
        needs = needs if isinstance(needs, list) else []
        graph[name] = [n for n in needs if isinstance(n, str)]
        problems += [f"stages.{name}.needs: unknown stage {n!r}" for n in graph[name]
                     if n not in stages]
    cycle = find_cycle(graph)
    if cycle:
        problems.append(f"stages: cycle {' -> '.join(cycle)}")
    return problems


def format_validation_errors(err: ValidationError) -> list[str]:
    """One `key.path: message` line per pydantic error, without the union's `kind` tag."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if len(loc) > 2 and loc[0] == "stages" and loc[2] in STAGE_KINDS:
            del loc[2]
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"{'.'.join(loc) or '<recipe>'}: {message}")
    return lines


MODEL_PATH_FIELDS = ("llm_path", "vision_path", "diffusion_path")


def local_paths(recipe: RecipeSpec) -> Iterator[tuple[str, str]]:
    """Yield (key path, filesystem path) for every local path a recipe names."""
    for name, stage in recipe.stages.items():
        key = f"stages.{name}"
        if isinstance(stage, TrainStageSpec):
            for field in MODEL_PATH_FIELDS:
                yield f"{key}.model.{field}", getattr(stage.model, field)
            for i, src in enumerate(stage.data.sources):
                yield f"{key}.data.sources.{i}.path", src.path
            if stage.data.features is not None and not is_stage_ref(stage.data.features):
                yield f"{key}.data.features", stage.data.features
            for field in ("llm", "plugins"):
                value = getattr(stage.init, field)
                if value != BASE_SOURCE and not is_stage_ref(value):
                    yield f"{key}.init.{field}", value
        elif isinstance(stage, MergeStageSpec):
            for field, value in stage.merge.model_dump().items():
                if not is_stage_ref(value):
                    yield f"{key}.merge.{field}", value
        elif isinstance(stage, PrecomputeStageSpec):
            pre = stage.precompute
            yield f"{key}.precompute.vision_path", pre.vision_path
            yield f"{key}.precompute.diffusion_path", pre.diffusion_path
            for i, src in enumerate(pre.sources):
                yield f"{key}.precompute.sources.{i}.path", src.path
        else:
            if stage.base_model is not None:
                for field in MODEL_PATH_FIELDS:
                    yield f"{key}.base_model.{field}", getattr(stage.base_model, field)
            if not is_stage_ref(stage.eval.model) and stage.eval.model != BASE_SOURCE:
                yield f"{key}.eval.model", stage.eval.model
            for field, value in stage.eval.params.local_paths().items():
                yield f"{key}.eval.params.{field}", value


def resolve_paths(recipe: RecipeSpec) -> RecipeSpec:
    """Make every relative local path absolute against the recipe's `root`."""
    root = Path(recipe.root).expanduser().resolve()
    data = recipe.model_dump()
    data["root"] = str(root)
    for key, value in local_paths(recipe):
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        resolved = Path(value).expanduser()
        node[leaf] = str(resolved if resolved.is_absolute() else root / resolved)
    return RecipeSpec.model_validate(data)
