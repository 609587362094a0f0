"""Trainable parameter groups of a DreamLLM: the one place their module prefixes are spelled.

The group and plugin names are contracts (`dreamray.contracts`); this module maps them to module
prefixes.
The functions below only walk ``named_parameters()`` (no torch import).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dreamray.contracts import (
    DIFFUSION_PLUGIN,
    DREAM_PLUGIN,
    GROUP_NAMES,
    LLM_MODULE,
    VISION_PLUGIN,
)

# Parameter-name prefixes of the plugin groups, inside `DreamLLM`.
PLUGIN_GROUP_PREFIXES: dict[str, str] = {
    "vision_encoder": f"{VISION_PLUGIN}.clip_vision_model.",
    "vision_projector": f"{VISION_PLUGIN}.projector.",
    "dream_queries": f"{DREAM_PLUGIN}.dream_queries",
    "condition_projector": f"{DIFFUSION_PLUGIN}.projector.",
    "unet": f"{DIFFUSION_PLUGIN}.unet.",
    "vae": f"{DIFFUSION_PLUGIN}.vae.",
}


class GroupError(ValueError):
    """An unknown group, an empty requested group, or a parameter that belongs to no group."""


def _module_prefix(root: Any, target: Any, root_name: str) -> str:
    """`root_name.<path>.` of the submodule `target` of `root`, found by identity."""
    for name, module in root.named_modules():
        if module is target:
            return f"{root_name}.{name}." if name else f"{root_name}."
    raise GroupError(f"{type(target).__name__} is not a submodule of {root_name}")


def llm_group_prefixes(model: Any) -> dict[str, str]:
    """Prefixes of the input embeddings and the LM head, wherever this LLM architecture keeps them.

    Args:
        model: a `DreamLLM` (anything with an ``llm`` attribute that is an HF causal LM).

    Returns:
        ``{"embed_tokens": ..., "lm_head": ...}``, e.g. ``llm.model.embed_tokens.`` for Llama.
    """
    llm = getattr(model, LLM_MODULE)
    return {
        "embed_tokens": _module_prefix(llm, llm.get_input_embeddings(), LLM_MODULE),
        "lm_head": _module_prefix(llm, llm.get_output_embeddings(), LLM_MODULE),
    }


def group_of(name: str, llm_prefixes: dict[str, str]) -> str:
    """The group a parameter name belongs to.

    Args:
        name: a name from ``DreamLLM.named_parameters()``.
        llm_prefixes: the output of `llm_group_prefixes` for that model.

    Returns:
        One of `GROUP_NAMES`.

    Raises:
        GroupError: when the name matches no group.
    """
    for group, prefix in {**llm_prefixes, **PLUGIN_GROUP_PREFIXES}.items():
        if name.startswith(prefix):
            return group
    if name.startswith(f"{LLM_MODULE}."):
        return "llm"  # the decoder body: layers and final norm
    raise GroupError(f"parameter {name!r} belongs to no group of {list(GROUP_NAMES)}")


def parameters_by_group(model: Any) -> dict[str, list[tuple[str, Any]]]:
    """Every parameter of the model, sorted into groups.

    Args:
        model: a `DreamLLM`.

    Returns:
        ``{group: [(name, parameter), ...]}`` with every group of `GROUP_NAMES` present.

    Raises:
        GroupError: when a parameter belongs to no group.
    """
    prefixes = llm_group_prefixes(model)
    groups: dict[str, list[tuple[str, Any]]] = {g: [] for g in GROUP_NAMES}
    for name, param in model.named_parameters():
        groups[group_of(name, prefixes)].append((name, param))
    return groups


def _check_names(groups: Iterable[str]) -> list[str]:
    wanted = list(groups)
    unknown = [g for g in wanted if g not in GROUP_NAMES]
    if unknown:
        raise GroupError(f"unknown groups {unknown}; known: {list(GROUP_NAMES)}")
    return wanted


def freeze_all_but(model: Any, groups: Iterable[str]) -> dict[str, int]:
    """Make exactly the parameters of `groups` trainable and freeze every other one.

    Args:
        model: a `DreamLLM`.
        groups: names from `GROUP_NAMES`.

    Returns:
        The number of trainable elements per requested group.

    Raises:
        GroupError: on an unknown group name, or a requested group with no parameters (a typo'd
            architecture or tied weights would otherwise train nothing, silently).
    """
    wanted = _check_names(groups)
    by_group = parameters_by_group(model)
    empty = [g for g in wanted if not by_group[g]]
    if empty:
        raise GroupError(f"requested trainable groups {empty} have no parameters in this model")
    for group, params in by_group.items():
        for _, param in params:
            param.requires_grad_(group in wanted)
    return {g: sum(_numel(p) for _, p in by_group[g]) for g in wanted}


def count_parameters_by_group(model: Any) -> dict[str, int]:
    """Number of parameter elements in every group (0 for a group this model lacks).

    Args:
        model: a `DreamLLM`.

    Returns:
        ``{group: count}`` over all of `GROUP_NAMES`.
    """
    return {g: sum(_numel(p) for _, p in ps) for g, ps in parameters_by_group(model).items()}


def _numel(param: Any) -> int:
    # under ZeRO-3 a partitioned parameter is empty locally and carries its true size
    return int(getattr(param, "ds_numel", param.numel()))
