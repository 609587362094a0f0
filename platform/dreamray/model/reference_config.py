"""The ``config.json`` of the reference's checkpoints (RunpeiDong/DreamLLM, `omni`), both ways.

The reference saves its `DreamLLMConfig` (``omni/models/dreamllm/configuration_dreamllm.py``):
model type ``dreamllm``, architecture ``DreamLLMForCausalMLM``, the LLaMA decoder's fields at the
top level, and the DreamLLM fields ``special_tokens2ids_dict`` (token -> id, the additional
special tokens nested under ``additional_special_tokens``), ``plugins_init_kwargs`` (plugin name ->
the constructor keywords of its class, with ``_target_`` naming the class: the training config's
``<plugin>_config_init_kwargs`` after `DreamLLMConfig.update_plugins`), ``plugins_type``
(``embedding`` / ``head``), the loss weights and the logging flags.

`reference_config_dict` writes that dict for one of our models; `read_reference` reads one back
into what our loader needs (a `LlamaConfig`, a `ModelSpec` of the tower dirs and plugin shapes).
Errors name the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamray.config.specs import ModelSpec, ProjectorSpec
from dreamray.contracts import DIFFUSION_PLUGIN, DREAM_PLUGIN, PLUGIN_MODULES, VISION_PLUGIN
from dreamray.model.plugin_config import DREAMLLM_MODEL_TYPE, DreamLLMConfig
from dreamray.model.tokens import ADDITIONAL_SPECIAL_TOKENS

REFERENCE_ARCHITECTURE = "DreamLLMForCausalMLM"
PLUGINS_INIT_KWARGS = "plugins_init_kwargs"
PLUGINS_TYPE = "plugins_type"
SPECIAL_TOKENS2IDS = "special_tokens2ids_dict"
ADDITIONAL_KEY = "additional_special_tokens"
# `_target_` of each plugin: `omni.config.registry._convert_target_to_string` of the class in
# `omni/models/dreamllm/modeling_plugins.py` (`omni.models.dreamllm` re-exports nothing)
PLUGIN_TARGETS = {
    name: f"omni.models.dreamllm.modeling_plugins.{cls}"
    for name, cls in (
        (VISION_PLUGIN, "CLIPVisionEmbedding"),
        (DREAM_PLUGIN, "DreamEmbedding"),
        (DIFFUSION_PLUGIN, "StableDiffusionHead"),
    )
}
PLUGIN_TYPES = {VISION_PLUGIN: "embedding", DREAM_PLUGIN: "embedding", DIFFUSION_PLUGIN: "head"}
# The decoder fields `DreamLLMConfig.__init__` takes (configuration_dreamllm.py, lines 148-168)
LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
    "initializer_range", "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id",
    "eos_token_id", "pretraining_tp", "tie_word_embeddings", "rope_theta", "rope_scaling",
    "attention_bias",
)
VISION_PATH_KEY = "clip_vision_model_name_or_path"
DIFFUSION_PATH_KEY = "diffusion_name_or_path"


class ReferenceConfigError(ValueError):
    """A reference ``config.json`` whose fields are missing or do not fit together."""


def is_reference_config(config: dict[str, Any]) -> bool:
    """Whether a parsed ``config.json`` is the reference's (LLaMA fields at the top level).

    Args:
        config: the parsed file.

    Returns:
        True for model type ``dreamllm`` without our ``llm_config`` / ``dreamllm`` sections.
    """
    ours = "llm_config" in config or "dreamllm" in config
    return config.get("model_type") == DREAMLLM_MODEL_TYPE and not ours


def llama_config(config: dict[str, Any]) -> Any:
    """The LLaMA decoder's config from the reference's top-level fields.

    Args:
        config: the parsed reference ``config.json``.

    Returns:
        A `LlamaConfig` (fields the file omits keep LLaMA's defaults, as in the reference).
    """
    from transformers import LlamaConfig

    rope = ("rope_theta", "rope_scaling")
    fields = {k: config[k] for k in LLAMA_FIELDS if k in config and k not in rope}
    return LlamaConfig(**fields, rope_parameters=_rope_parameters(config))


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 reads RoPE from `rope_parameters` (and warns on the reference's two fields)
    theta = float(config["rope_theta"]) if "rope_theta" in config else 10000.0
    scaling = config["rope_scaling"] if "rope_scaling" in config else None
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": scaling["type"], "factor": float(scaling["factor"]), "rope_theta": theta}


def llama_rope_theta(llm_config: Any) -> float:
    """The RoPE base of an HF config (transformers 5 keeps it in ``rope_parameters``)."""
    return float(llm_config.rope_parameters["rope_theta"])


def _rope_fields(llm_config: Any) -> dict[str, Any]:
    # transformers 5 folds rope_theta / rope_scaling into `rope_parameters`; the reference has both
    rope = llm_config.rope_parameters
    kind = rope["rope_type"]
    scaling = None if kind == "default" else {"type": kind, "factor": float(rope["factor"])}
    return {"rope_theta": llama_rope_theta(llm_config), "rope_scaling": scaling}


def _decoder_fields(llm_config: Any) -> dict[str, Any]:
    if llm_config.model_type != "llama":
        raise ReferenceConfigError(
            f"the reference layout holds a LLaMA decoder only, this LLM is a "
            f"{llm_config.model_type!r}: save it with layout='dreamray'"
        )
    fields = {k: getattr(llm_config, k) for k in LLAMA_FIELDS if hasattr(llm_config, k)}
    return {**fields, **_rope_fields(llm_config)}


def special_tokens2ids(tokenizer: Any) -> dict[str, Any]:
    """``special_tokens2ids_dict`` as `DreamLLMConfig.update_special_tokens2ids_dict` fills it
    from ``tokenization_dreamllm.special_tokens_dict`` (configuration_dreamllm.py, lines 225-235).

    Args:
        tokenizer: a tokenizer with DreamLLM's tokens.

    Returns:
        ``{"<s>": id, "</s>": id, "<unk>": id, "[PAD]": id, "additional_special_tokens": {...}}``.
    """
    single = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token]
    out: dict[str, Any] = {t: tokenizer.convert_tokens_to_ids(t) for t in single if t is not None}
    out[ADDITIONAL_KEY] = {
        t: tokenizer.convert_tokens_to_ids(t) for t in ADDITIONAL_SPECIAL_TOKENS
    }
    return out


@dataclass(frozen=True)
class TowerPaths:
    """Where the reference's plugins load their towers from (local dirs, or hub ids)."""

    vision: str
    diffusion: str


def _projector_kwargs(spec: ProjectorSpec) -> dict[str, Any]:
    return {"projector_type": spec.kind, "projector_depth": spec.depth}


def plugins_init_kwargs(cfg: DreamLLMConfig, hidden: int, towers: TowerPaths) -> dict[str, Any]:
    """``plugins_init_kwargs`` for one of our models, with the keywords of
    ``projects/dreamllm/configs/common.py`` (lines 12-56) and ``embed_hidden_size``.

    Args:
        cfg: the model's plugin configuration.
        hidden: the LLM hidden size.
        towers: the tower dirs to record.

    Returns:
        Plugin name -> its init keywords (``_target_`` first).
    """
    drop = cfg.condition_dropout if cfg.condition_dropout > 0 else None
    return {
        VISION_PLUGIN: {
            "_target_": PLUGIN_TARGETS[VISION_PLUGIN], **_projector_kwargs(cfg.vision_projector),
            VISION_PATH_KEY: towers.vision, "pretrained_model_name_or_path": None,
            "use_additional_post_layernorm": False, "select_layer": cfg.vision_select_layer,
            "freeze_clip_vision_model": True, "freeze_embedding_layers": True,
            "freeze_projector": False, "local_files_only": True, "embed_hidden_size": hidden,
        },
        DREAM_PLUGIN: {
            "_target_": PLUGIN_TARGETS[DREAM_PLUGIN], "pretrained_model_name_or_path": None,
            "num_dream_queries": cfg.num_dream_queries, "freeze_dream_queries": False,
            "embed_hidden_size": hidden,
        },
        DIFFUSION_PLUGIN: {
            "_target_": PLUGIN_TARGETS[DIFFUSION_PLUGIN],
            **_projector_kwargs(cfg.condition_projector), DIFFUSION_PATH_KEY: towers.diffusion,
            "pretrained_model_name_or_path": None, "freeze_vae": True, "freeze_unet": True,
            "freeze_projector": False, "local_files_only": True, "embed_hidden_size": hidden,
            **_set_only({"drop_prob": drop, "snr_gamma": cfg.snr_gamma}),
        },
    }


def _set_only(options: dict[str, Any]) -> dict[str, Any]:
    # common.py leaves the unused options out (the constructor's None); so do we, field for field
    return {k: v for k, v in options.items() if v is not None}


def reference_config_dict(
    llm_config: Any, cfg: DreamLLMConfig, tokenizer: Any, towers: TowerPaths, dtype: str
) -> dict[str, Any]:
    """The reference's ``config.json`` for one of our models.

    Args:
        llm_config: the LLM's HF config (LLaMA only).
        cfg: the plugin configuration.
        tokenizer: the model's tokenizer (its DreamLLM token ids are recorded).
        towers: the tower dirs the plugins record.
        dtype: the weights' dtype name (``torch_dtype``).

    Returns:
        The JSON-ready dict.

    Raises:
        ReferenceConfigError: when the LLM is not a LLaMA decoder.
    """
    import transformers

    return {
        "architectures": [REFERENCE_ARCHITECTURE],
        "model_type": DREAMLLM_MODEL_TYPE,
        **_decoder_fields(llm_config),
        SPECIAL_TOKENS2IDS: special_tokens2ids(tokenizer),
        PLUGINS_INIT_KWARGS: plugins_init_kwargs(cfg, llm_config.hidden_size, towers),
        PLUGINS_TYPE: dict(PLUGIN_TYPES),
        "loss_weight_lm": 1.0,
        "loss_weight_vm": 10.0,
        "loss_scale_schedule": "none",
        "log_attentions": False,
        "log_hidden_states": False,
        "torch_dtype": dtype,
        "transformers_version": transformers.__version__,
    }


def _field(config: dict[str, Any], *keys: str) -> Any:
    """``config[k0][k1]...``, raising with the dotted field name when a level is missing."""
    value: Any = config
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ReferenceConfigError(f"config.json has no field {'.'.join(keys[: depth + 1])}")
        value = value[key]
    return value


def _plugins(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    plugins = _field(config, PLUGINS_INIT_KWARGS)
    types = _field(config, PLUGINS_TYPE)
    for name in PLUGIN_MODULES:
        _field(config, PLUGINS_INIT_KWARGS, name)
        if types.get(name) != PLUGIN_TYPES[name]:
            raise ReferenceConfigError(
                f"config.json {PLUGINS_TYPE}.{name} is {types.get(name)!r}, "
                f"expected {PLUGIN_TYPES[name]!r}"
            )
    return plugins


def _projector(config: dict[str, Any], name: str) -> ProjectorSpec:
    kind = _field(config, PLUGINS_INIT_KWARGS, name, "projector_type")
    depth = _field(config, PLUGINS_INIT_KWARGS, name, "projector_depth")
    try:
        return ProjectorSpec(kind=kind, depth=depth)
    except ValueError as err:
        raise ReferenceConfigError(
            f"config.json {PLUGINS_INIT_KWARGS}.{name}.projector_type/_depth: {err}"
        ) from err


def _tower_path(config: dict[str, Any], name: str, key: str, override: str | None) -> str:
    path = override or _field(config, PLUGINS_INIT_KWARGS, name, key)
    if not Path(str(path)).is_dir():
        raise ReferenceConfigError(
            f"config.json {PLUGINS_INIT_KWARGS}.{name}.{key} = {path!r} is not a local dir "
            "(the tower configs are read from it): pass spec with its vision/diffusion paths"
        )
    return str(path)


# Constructor defaults of the reference's plugin classes (modeling_plugins.py: CLIPVisionEmbedding
# lines 185-199, StableDiffusionHead lines 336-355), for keywords a saved config may omit.
PLUGIN_DEFAULTS = {
    (VISION_PLUGIN, "select_layer"): -2,
    (VISION_PLUGIN, "use_additional_post_layernorm"): False,
    (DIFFUSION_PLUGIN, "drop_prob"): None,
    (DIFFUSION_PLUGIN, "snr_gamma"): None,
}


def _keyword(plugins: dict[str, dict[str, Any]], name: str, key: str) -> Any:
    kwargs = plugins[name]
    return kwargs[key] if key in kwargs else PLUGIN_DEFAULTS[(name, key)]


def _check_widths(config: dict[str, Any], plugins: dict[str, dict[str, Any]]) -> None:
    hidden = _field(config, "hidden_size")
    for name in PLUGIN_MODULES:
        width = _field(config, PLUGINS_INIT_KWARGS, name, "embed_hidden_size")
        if width != hidden:
            raise ReferenceConfigError(
                f"config.json {PLUGINS_INIT_KWARGS}.{name}.embed_hidden_size = {width} "
                f"!= hidden_size {hidden}"
            )
    if _keyword(plugins, VISION_PLUGIN, "use_additional_post_layernorm"):
        raise ReferenceConfigError(
            f"config.json {PLUGINS_INIT_KWARGS}.{VISION_PLUGIN}.use_additional_post_layernorm "
            "is true: not supported (no released config uses it)"
        )


def read_reference(config: dict[str, Any], spec: ModelSpec | None) -> tuple[Any, ModelSpec]:
    """The LLaMA config and the tower dirs + plugin shapes of a reference ``config.json``.

    Args:
        config: the parsed file.
        spec: optional; its tower paths replace the recorded ones (which must otherwise be local
            dirs), its shapes are checked against the file by the caller.

    Returns:
        ``(LlamaConfig, ModelSpec)``: the spec's ``llm_path`` is unused (the LLM is in the dir).

    Raises:
        ReferenceConfigError: naming the missing or inconsistent field.
    """
    plugins = _plugins(config)
    _check_widths(config, plugins)
    drop = _keyword(plugins, DIFFUSION_PLUGIN, "drop_prob")
    towers = ModelSpec(
        llm_path="",
        vision_path=_tower_path(config, VISION_PLUGIN, VISION_PATH_KEY,
                                spec.vision_path if spec else None),
        diffusion_path=_tower_path(config, DIFFUSION_PLUGIN, DIFFUSION_PATH_KEY,
                                   spec.diffusion_path if spec else None),
        num_dream_queries=_field(config, PLUGINS_INIT_KWARGS, DREAM_PLUGIN, "num_dream_queries"),
        vision_select_layer=_keyword(plugins, VISION_PLUGIN, "select_layer"),
        vision_projector=_projector(config, VISION_PLUGIN),
        condition_projector=_projector(config, DIFFUSION_PLUGIN),
        condition_dropout=0.0 if drop is None else drop,
        snr_gamma=_keyword(plugins, DIFFUSION_PLUGIN, "snr_gamma"),
        gradient_checkpointing=False,
    )
    return llama_config(config), towers


def check_token_ids(config: dict[str, Any], tokenizer: Any) -> None:
    """The ids ``special_tokens2ids_dict`` records must be the tokenizer's (when it is there).

    Args:
        config: the parsed reference ``config.json``.
        tokenizer: the dir's tokenizer.

    Raises:
        ReferenceConfigError: naming each token whose recorded id differs.
    """
    if SPECIAL_TOKENS2IDS not in config:
        return
    recorded = _field(config, SPECIAL_TOKENS2IDS, ADDITIONAL_KEY)
    actual = special_tokens2ids(tokenizer)[ADDITIONAL_KEY]
    wrong = [
        f"{t}: config {recorded[t]} vs tokenizer {actual[t]}"
        for t in ADDITIONAL_SPECIAL_TOKENS
        if t in recorded and recorded[t] != actual[t]
    ]
    if wrong:
        raise ReferenceConfigError(
            f"config.json {SPECIAL_TOKENS2IDS} disagrees with the tokenizer: {wrong}"
        )
