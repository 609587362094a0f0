"""Stage identities: what makes two runs of a stage "the same" (pure, no Ray).

A stage's identity is the sha256 of its resolved spec (`model_dump_json`) and of the
identities of the stages it needs; a precompute stage's also covers the bytes it reads
(`precompute_content`). Editing one stage therefore changes its identity and the
identity of everything downstream of it, and nothing upstream.
"""

from __future__ import annotations

import hashlib
import json

from dreamray.config import RecipeSpec
from dreamray.config.precompute_specs import PrecomputeStageSpec
from dreamray.config.specs import Spec

SHORT_ID_LEN = 12


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_hash(stage: Spec) -> str:
    """Hash of one stage's resolved spec (paths already absolute, defaults filled in).

    Args:
        stage: a validated stage spec.

    Returns:
        The hex sha256 of its canonical JSON dump.
    """
    return sha256_text(stage.model_dump_json())


def stage_identities(recipe: RecipeSpec) -> dict[str, str]:
    """The identity of every stage of a recipe, computed in dependency order.

    Args:
        recipe: a validated, path-resolved recipe.

    Returns:
        Stage name -> hex identity.
    """
    identities: dict[str, str] = {}
    for name in recipe.topological_order():
        stage = recipe.stages[name]
        # `needs` is a superset of the stages read through `stage:` refs (the recipe validator
        # enforces it), so ordering-only dependencies count too.
        payload = {
            "spec": spec_hash(stage),
            "inputs": {dep: identities[dep] for dep in sorted(stage.needs)},
        }
        if isinstance(stage, PrecomputeStageSpec):
            payload["content"] = precompute_content(stage)
        identities[name] = sha256_text(json.dumps(payload, sort_keys=True))
    return identities


def precompute_content(stage: PrecomputeStageSpec) -> str:
    """What a precompute stage's features are made of besides its spec: the towers' files and
    every source shard (`dreamray.data.features` digests). Towers or shards changed in place
    give the stage, and every stage after it, a new identity: the features are made anew.

    Args:
        stage: a precompute stage.

    Returns:
        A hex digest; towers or sources that cannot be read yet count as "missing" (the stage
        itself then reports them).
    """
    from dreamray.data.features import shard_digest, tower_digest
    from dreamray.data.mixing import shard_files

    pre = stage.precompute
    parts = []
    try:
        parts.append(tower_digest(pre.vision_path, pre.diffusion_path))
        for source in pre.sources:
            parts += [f"{source.name}\0{f}\0{shard_digest(f)}" for f in shard_files(source.path)]
    except OSError:
        parts.append("missing")
    return sha256_text("\n".join(parts))


def stage_key(name: str, identity: str) -> str:
    """The directory / Ray Train run name of one stage identity: `<stage>-<id12>`."""
    return f"{name}-{identity[:SHORT_ID_LEN]}"


def downstream_of(recipe: RecipeSpec, names: set[str]) -> set[str]:
    """Every stage that needs one of `names`, directly or not (the names included).

    Args:
        recipe: a validated recipe.
        names: the starting stages.

    Returns:
        The closure of `names` under "is needed by".
    """
    closure = set(names)
    for name in recipe.topological_order():
        if any(dep in closure for dep in recipe.stages[name].needs):
            closure.add(name)
    return closure
