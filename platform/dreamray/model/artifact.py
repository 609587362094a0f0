"""A DreamLLM's artifact directory in our layout (the reference's file names, our config.json).

Files: ``config.json`` (model type ``dreamllm``: the LLM's HF config under ``llm_config``, a
``dreamllm`` section that rebuilds the plugins; `dreamray.model.plugin_config.DreamLLMHFConfig`
reads it, so `AutoModelForCausalLM.from_pretrained(dir)` loads the DreamLLM once ``dreamray`` is
imported), ``model.safetensors`` (the LLM only, HF keys; above ``max_shard_size`` HF's
``model-0000N-of-0000M.safetensors`` + ``model.safetensors.index.json``),
``clip_vision_embedding.bin``, ``dream_embedding.bin``, ``stable_diffusion_head.bin`` (each
plugin's state dict, the reference's keys), the tokenizer files and
``preprocessor_config.json`` (the CLIP image processor).
The reference's own layout (its ``config.json``, released ``pytorch_model.bin``) is
`dreamray.model.reference_layout`, built on this module's checked loaders.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dreamray.config.specs import ModelSpec
from dreamray.contracts import (
    CONFIG_FILE,
    DIFFUSION_PLUGIN,
    DREAM_PLUGIN,
    LLM_MODULE,
    LLM_WEIGHTS,
    PLUGIN_FILES,
    PLUGIN_MODULES,
    PROCESSOR_FILE,
    RELEASED_WEIGHTS,
    VISION_PLUGIN,
)
from dreamray.files import atomic_dir, atomic_write_json
from dreamray.model import towers
from dreamray.model.plugin_config import (
    DREAMLLM_MODEL_TYPE,
    LLM_CONFIG_KEY,
    DreamLLMConfig,
    artifact_config_dict,
)
from dreamray.model.plugins import DreamEmbedding

if TYPE_CHECKING:
    # The class calls into this module (`DreamLLM.save_pretrained` / `from_pretrained`) and
    # hands itself over, so this module never imports it at run time.
    from dreamray.model.dreamllm import DreamLLM

DREAMLLM_SECTION = "dreamllm"
RELEASED_PREFIXES = {
    VISION_PLUGIN: "model.clip_vision_embedding.",
    DREAM_PLUGIN: "model.dream_embedding.",
    DIFFUSION_PLUGIN: "stable_diffusion_head.",
}
_MAX_NAMES = 20  # key lists in errors are cut to this many names
# transformers 5's CLIPVisionModel dropped the `vision_model.` level that transformers 4 (and so
# the reference's files) have; the files keep it, the module may not
CLIP_MODULE = "clip_vision_model."
CLIP_FILE_LEVEL = "vision_model."


class ArtifactError(ValueError):
    """An artifact dir that is incomplete or does not fit the model."""


def split_state_dict(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a `DreamLLM` state dict into the LLM's (HF keys) and each plugin's.

    Args:
        state: ``DreamLLM.state_dict()`` (or a consolidated ZeRO-3 equivalent).

    Returns:
        ``{"llm": {...}, "clip_vision_embedding": {...}, ...}`` with the top prefix stripped.

    Raises:
        ArtifactError: naming keys that belong to no part.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in (LLM_MODULE, *PLUGIN_MODULES)}
    stray = []
    for key, tensor in state.items():
        top, _, rest = key.partition(".")
        if top in parts:
            parts[top][rest] = tensor.detach().cpu()
        else:
            stray.append(key)
    if stray:
        raise ArtifactError(f"state dict keys of no part: {format_keys(stray)}")
    return parts


def _clip_has_level(model: DreamLLM) -> bool:
    keys = getattr(model, VISION_PLUGIN).clip_vision_model.state_dict()
    return all(k.startswith(CLIP_FILE_LEVEL) for k in keys)


def to_file_keys(model: DreamLLM, name: str, state: dict[str, torch.Tensor]) -> dict:
    """A plugin's module state dict -> the keys its reference file uses.

    Args:
        model: the model the state dict comes from.
        name: the plugin name.
        state: its state dict.

    Returns:
        The state dict with the reference's keys.
    """
    if name != VISION_PLUGIN or _clip_has_level(model):
        return state
    level = CLIP_MODULE + CLIP_FILE_LEVEL
    return {
        (k.replace(CLIP_MODULE, level, 1) if k.startswith(CLIP_MODULE) else k): v
        for k, v in state.items()
    }


def from_file_keys(model: DreamLLM, name: str, state: dict[str, torch.Tensor]) -> dict:
    """Inverse of `to_file_keys`: a plugin file's keys -> the module's keys."""
    if name != VISION_PLUGIN or _clip_has_level(model):
        return state
    level = CLIP_MODULE + CLIP_FILE_LEVEL
    return {
        (k.replace(level, CLIP_MODULE, 1) if k.startswith(level) else k): v
        for k, v in state.items()
    }


def save_dreamllm(
    model: DreamLLM, out_dir: str | Path, state_dict: dict | None = None,
    max_shard_size: int | str = "10GB",
) -> Path:
    """Write a model's artifact dir atomically (a temp dir next to it, then a rename).

    Args:
        model: the model (its configs and tokenizer are saved).
        out_dir: the artifact dir; replaced if it exists.
        state_dict: the full state dict to save instead of ``model.state_dict()`` (e.g. one
            consolidated from ZeRO-3 shards).
        max_shard_size: the LLM's weights above this size are sharded (HF's naming and index).

    Returns:
        The artifact dir.
    """
    out_dir = Path(out_dir)
    parts = split_state_dict(state_dict if state_dict is not None else model.state_dict())
    with atomic_dir(out_dir) as tmp:
        model.llm.save_pretrained(tmp, state_dict=parts[LLM_MODULE], max_shard_size=max_shard_size)
        llm_config = json.loads((tmp / CONFIG_FILE).read_text())
        head = model.llm.get_output_embeddings()
        tied = head is not None and head.weight is model.llm.get_input_embeddings().weight
        config = artifact_config_dict(llm_config, model.dreamllm_config, tied)
        atomic_write_json(tmp / CONFIG_FILE, config)
        for name in PLUGIN_MODULES:
            torch.save(to_file_keys(model, name, parts[name]), tmp / PLUGIN_FILES[name])
        model.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / PROCESSOR_FILE, model.dreamllm_config.image_processor)
    return out_dir


def format_keys(keys: list[str]) -> str:
    """Keys for an error message: sorted, cut after the first 20 (`[a, b] (+3 more)`)."""
    shown = ", ".join(sorted(keys)[:_MAX_NAMES])
    more = f" (+{len(keys) - _MAX_NAMES} more)" if len(keys) > _MAX_NAMES else ""
    return f"[{shown}]{more}"


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, naming every missing, unexpected and mis-shaped key.

    Args:
        module: the module to fill.
        state: its state dict as read from `source`.
        source: the file it came from, for messages.

    Raises:
        ArtifactError: on any missing or unexpected key or shape mismatch.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {format_keys(mismatched)}")
    if problems:
        raise ArtifactError(f"{source}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_plugin_states(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read the three plugin state dicts from a dir: our ``.bin`` files or a released full file.

    Args:
        path: an artifact dir.

    Returns:
        ``{plugin name: state dict}``.

    Raises:
        ArtifactError: naming the plugin files that are missing.
    """
    path = Path(path)
    missing = [f for f in PLUGIN_FILES.values() if not (path / f).is_file()]
    if not missing:
        return {name: _torch_load(path / f) for name, f in PLUGIN_FILES.items()}
    if (path / RELEASED_WEIGHTS).is_file():
        full = _torch_load(path / RELEASED_WEIGHTS)
        return {
            name: {k[len(p) :]: v for k, v in full.items() if k.startswith(p)}
            for name, p in RELEASED_PREFIXES.items()
        }
    raise ArtifactError(f"{path}: plugin files {missing} are missing (and no {RELEASED_WEIGHTS})")


def load_plugins_into(model: DreamLLM, path: str | Path) -> None:
    """Replace the model's plugin weights with those of an artifact dir (e.g. stage II's start:
    the base LLM with the merged stage-I plugins).

    Args:
        model: a model whose plugin shapes match the files.
        path: a dir with the three plugin ``.bin`` files (or a released ``pytorch_model.bin``).

    Raises:
        ArtifactError: on missing files, or on missing/unexpected/mis-shaped keys.
    """
    path = Path(path)
    for name, state in read_plugin_states(path).items():
        source = path / (
            PLUGIN_FILES[name] if (path / PLUGIN_FILES[name]).is_file() else RELEASED_WEIGHTS
        )
        load_checked(getattr(model, name), from_file_keys(model, name, state), str(source))


def read_config(path: Path) -> dict[str, Any]:
    """A dir's parsed ``config.json``.

    Raises:
        ArtifactError: when there is none.
    """
    if not (path / CONFIG_FILE).is_file():
        raise ArtifactError(f"{path}: no {CONFIG_FILE}")
    return json.loads((path / CONFIG_FILE).read_text())


def load_dreamllm(
    cls: type[DreamLLM], path: str | Path, spec: ModelSpec | None = None,
    dtype: torch.dtype | None = None,
) -> DreamLLM:
    """Load a DreamLLM from an artifact dir of our layout; called (through
    `DreamLLM.from_pretrained`) for every dir whose config is not the reference's.

    Args:
        cls: the model class (`DreamLLM`).
        path: the artifact dir.
        spec: optional; its training options (condition dropout, min-SNR, gradient checkpointing)
            replace the saved ones, and its shapes must match the artifact.
        dtype: parameter dtype (None: as stored).

    Returns:
        The model, towers frozen.

    Raises:
        ArtifactError: on a missing file or config, or weights that do not fit.
    """
    path = Path(path)
    config = read_config(path)
    if DREAMLLM_SECTION not in config:
        raise ArtifactError(f"{path / CONFIG_FILE}: no `{DREAMLLM_SECTION}` section")
    cfg = apply_spec(DreamLLMConfig.from_dict(config[DREAMLLM_SECTION]), spec)
    llm, tokenizer = _load_llm(path, config)
    model = assemble(cls, llm, tokenizer, cfg)
    load_plugins_into(model, path)
    return finish(model, spec, dtype)


def finish(model: DreamLLM, spec: ModelSpec | None, dtype: torch.dtype | None) -> DreamLLM:
    """A loaded model's last steps: towers frozen, `dtype`, the spec's gradient checkpointing.

    Args:
        model: the filled model.
        spec: the caller's spec, if any.
        dtype: parameter dtype (None: keep).

    Returns:
        `model`.
    """
    towers.freeze_towers(model)
    if dtype is not None:
        model.to(dtype)
    if spec is not None and spec.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def apply_spec(cfg: DreamLLMConfig, spec: ModelSpec | None) -> DreamLLMConfig:
    """The saved plugin config with a spec's training options; its shapes must be the saved.

    Raises:
        ArtifactError: when the spec's queries or projectors differ from the artifact's.
    """
    if spec is None:
        return cfg
    saved = (cfg.num_dream_queries, cfg.vision_projector, cfg.condition_projector)
    wanted = (spec.num_dream_queries, spec.vision_projector, spec.condition_projector)
    if saved != wanted:
        raise ArtifactError(
            f"spec wants (queries, vision proj, cond proj) {wanted}, artifact has {saved}"
        )
    return dataclasses.replace(
        cfg,
        condition_dropout=spec.condition_dropout,
        snr_gamma=spec.snr_gamma,
        vision_select_layer=spec.vision_select_layer,
    )


def assemble(cls: type[DreamLLM], llm: nn.Module, tokenizer: Any,
             cfg: DreamLLMConfig) -> DreamLLM:
    """The model around a loaded LLM, with plugins built from `cfg` (weights not loaded yet)."""
    dim = llm.get_input_embeddings().embedding_dim
    return cls(
        llm,
        tokenizer,
        towers.vision_from_config(cfg, dim),
        DreamEmbedding(cfg.num_dream_queries, dim),
        towers.diffusion_from_config(cfg, dim),
        cfg,
    )


def llm_config_of(config: dict[str, Any]) -> Any:
    """The LLM's HF config inside an artifact's ``config.json``.

    Args:
        config: the parsed ``config.json``: model type ``dreamllm`` with the LLM's config under
            ``llm_config``, or (artifacts written before that layout) the LLM's own config with
            a ``dreamllm`` section added.

    Returns:
        The LLM's config object (e.g. a `LlamaConfig`).
    """
    from transformers import AutoConfig

    if config["model_type"] == DREAMLLM_MODEL_TYPE:
        fields = dict(config[LLM_CONFIG_KEY])
    else:
        fields = {k: v for k, v in config.items() if k != DREAMLLM_SECTION}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _load_llm(path: Path, config: dict[str, Any]) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # the LLM's config is passed in: the dir's own model type routes to DreamLLM, not to it
    llm, info = AutoModelForCausalLM.from_pretrained(
        path, config=llm_config_of(config), local_files_only=True, output_loading_info=True
    )
    bad = {
        k: v
        for k, v in info.items()
        if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if bad:
        raise ArtifactError(f"{path / LLM_WEIGHTS}: {bad}")
    return llm, tokenizer
