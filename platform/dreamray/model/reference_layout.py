"""Checkpoint dirs in the layout the reference (RunpeiDong/DreamLLM) writes and publishes.

What its trainer's ``_save`` writes (``omni/train/dreamllm_trainer.py``, lines 82-118):
``config.json`` (`dreamray.model.reference_config`), the LLM through transformers 4.35's
``save_pretrained`` (``model-0000N-of-0000M.safetensors`` + ``model.safetensors.index.json``
above 10 GB, keys of ``DreamLLMForCausalMLM`` without the plugins: HF LLaMA keys plus each
layer's ``self_attn.rotary_emb.inv_freq``, a persistent buffer of its ``RotaryEmbedding``,
``omni/models/dreamllm/modeling_dreamllm.py`` line 105), the three plugin ``.bin`` files
(``torch.save(plugin.state_dict())``, ``modeling_plugins.py``) and the tokenizer. Its FSDP save
and the released checkpoints hold one ``pytorch_model.bin`` instead, the plugins under
``model.clip_vision_embedding.``, ``model.dream_embedding.`` and ``stable_diffusion_head.``.

`load_reference` loads any of these (`DreamLLM.from_pretrained` routes a reference
``config.json`` here); `save_reference` writes the first (``DreamLLM.save_pretrained(dir,
layout="reference", towers=...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dreamray.config.specs import ModelSpec
from dreamray.contracts import CONFIG_FILE, LLM_MODULE, PLUGIN_FILES, PLUGIN_MODULES
from dreamray.files import atomic_dir, atomic_write_json
from dreamray.model import reference_config as refcfg
from dreamray.model import shards, towers
from dreamray.model.artifact import (
    RELEASED_PREFIXES,
    ArtifactError,
    apply_spec,
    assemble,
    finish,
    load_plugins_into,
    read_config,
    split_state_dict,
    to_file_keys,
)
from dreamray.model.tokens import MissingSpecialTokensError, SpecialTokenIds

if TYPE_CHECKING:
    from dreamray.model.dreamllm import DreamLLM

ROTARY_BUFFER = ".self_attn.rotary_emb.inv_freq"


def is_reference_dir(path: str | Path) -> bool:
    """Whether a dir's ``config.json`` is the reference's (False when there is none)."""
    file = Path(path) / CONFIG_FILE
    return file.is_file() and refcfg.is_reference_config(read_config(Path(path)))


def _skip_key(key: str) -> bool:
    # the rotary buffer is recomputed from rope_theta; plugins come from their own files
    return key.endswith(ROTARY_BUFFER) or key.startswith(tuple(RELEASED_PREFIXES.values()))


def _tokenizer(path: Path, config: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    try:
        # the LLaMA config given: read as a `dreamllm` one, the dir's RoPE fields would warn
        tokenizer = AutoTokenizer.from_pretrained(
            path, config=refcfg.llama_config(config), local_files_only=True
        )
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: no loadable tokenizer files ({err})") from err
    try:
        SpecialTokenIds.from_tokenizer(tokenizer)
    except MissingSpecialTokensError as err:
        raise ArtifactError(f"{path}: the tokenizer files lack DreamLLM's tokens: {err}") from err
    vocab = config["vocab_size"] if "vocab_size" in config else None
    if vocab is not None and len(tokenizer) > vocab:
        raise ArtifactError(f"{path / CONFIG_FILE}: vocab_size {vocab} < the tokenizer's "
                            f"{len(tokenizer)} tokens")
    return tokenizer


def _configs(path: Path, config: dict[str, Any], spec: ModelSpec | None) -> tuple[Any, Any]:
    if refcfg.PLUGINS_INIT_KWARGS not in config:
        if spec is None:
            raise ArtifactError(f"{path} is a released checkpoint whose {CONFIG_FILE} has no "
                                f"{refcfg.PLUGINS_INIT_KWARGS}: pass spec (the tower dirs)")
        return refcfg.llama_config(config), towers.plugin_config(spec)
    try:
        llama, tower_spec = refcfg.read_reference(config, spec)
    except refcfg.ReferenceConfigError as err:
        raise ArtifactError(f"{path / CONFIG_FILE}: {err}") from err
    return llama, towers.plugin_config(tower_spec)


def load_reference(
    cls: type[DreamLLM], path: str | Path, spec: ModelSpec | None = None,
    dtype: torch.dtype | None = None,
) -> DreamLLM:
    """Load a checkpoint dir of the reference's layout.

    Args:
        cls: the model class (`DreamLLM`).
        path: the dir.
        spec: optional; replaces the tower dirs ``plugins_init_kwargs`` records (required when
            they are not local dirs, or the config has none: a released checkpoint), and its
            training options the recorded ones; its shapes must be the checkpoint's.
        dtype: parameter dtype (None: the LLM as ``torch_dtype``, the plugins fp32).

    Returns:
        The model, towers frozen; DreamLLM token ids read from the dir's tokenizer.

    Raises:
        ArtifactError: naming the file, key or field of a missing shard, an index naming a file
            that is not there, plugin keys or shapes that do not fit the config, a tokenizer
            without DreamLLM's tokens, or token ids that disagree with ``config.json``.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    config = read_config(path)
    tokenizer = _tokenizer(path, config)
    try:
        refcfg.check_token_ids(config, tokenizer)
    except refcfg.ReferenceConfigError as err:
        raise ArtifactError(f"{path / CONFIG_FILE}: {err}") from err
    llama, plugin_cfg = _configs(path, config, spec)
    stored = getattr(torch, config["torch_dtype"]) if "torch_dtype" in config else None
    with towers.skip_init():
        llm = AutoModelForCausalLM.from_config(llama, dtype=stored)
    shards.load_weights(llm, path, _skip_key)
    model = assemble(cls, llm, tokenizer, apply_spec(plugin_cfg, spec))
    load_plugins_into(model, path)
    return finish(model, spec, dtype)


def rotary_buffers(llm_config: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each layer's ``inv_freq`` as the reference's ``RotaryEmbedding`` registers it.

    Args:
        llm_config: a LLaMA config.
        dtype: the weights' dtype (the reference casts the whole model, buffers too).

    Returns:
        ``{"model.layers.<i>.self_attn.rotary_emb.inv_freq": tensor}``.
    """
    head_dim = llm_config.hidden_size // llm_config.num_attention_heads
    theta = refcfg.llama_rope_theta(llm_config)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    layers = range(llm_config.num_hidden_layers)
    return {f"model.layers.{i}{ROTARY_BUFFER}": inv_freq.to(dtype).clone() for i in layers}


def _llm_state(model: DreamLLM, parts: dict[str, dict[str, torch.Tensor]]) -> dict:
    state = dict(parts[LLM_MODULE])
    if model.llm.config.tie_word_embeddings:  # one storage, saved once (as HF does)
        state.pop("lm_head.weight", None)
    dtype = model.llm.get_input_embeddings().weight.dtype
    return {**state, **rotary_buffers(model.llm.config, dtype)}


def save_reference(
    model: DreamLLM, out_dir: str | Path, towers_at: refcfg.TowerPaths,
    state_dict: dict | None = None, max_shard_size: int | str = shards.DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write a model in the reference's layout, atomically (a temp dir, then a rename).

    Args:
        model: the model (LLaMA LLMs only: the reference's decoder).
        out_dir: the dir; replaced if it exists.
        towers_at: the tower dirs ``plugins_init_kwargs`` records (the reference rebuilds its
            plugins from them before loading the ``.bin`` files).
        state_dict: the full state dict to save instead of ``model.state_dict()``.
        max_shard_size: the LLM's weights above this size are sharded.

    Returns:
        The dir.

    Raises:
        ArtifactError: when the LLM is not a LLaMA decoder.
    """
    out_dir = Path(out_dir)
    parts = split_state_dict(state_dict if state_dict is not None else model.state_dict())
    llm_state = _llm_state(model, parts)
    dtype = str(model.llm.get_input_embeddings().weight.dtype).removeprefix("torch.")
    try:
        config = refcfg.reference_config_dict(
            model.llm.config, model.dreamllm_config, model.tokenizer, towers_at, dtype
        )
    except refcfg.ReferenceConfigError as err:
        raise ArtifactError(str(err)) from err
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / CONFIG_FILE, config)
        shards.write_sharded(llm_state, tmp, max_shard_size)
        for name in PLUGIN_MODULES:
            torch.save(to_file_keys(model, name, parts[name]), tmp / PLUGIN_FILES[name])
        model.tokenizer.save_pretrained(tmp)
    return out_dir
