"""`DreamLLMConfig`: what rebuilds a DreamLLM's plugins besides the LLM's own config (the
``dreamllm`` section of an artifact's ``config.json``), and `DreamLLMHFConfig`, the whole
``config.json`` as a Hugging Face config of model type ``dreamllm``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Not `from transformers import ...` and nothing of `transformers.models.auto`: this module is
# imported from inside that package's import (`dreamray.model.hf_import_hook`).
from transformers.configuration_utils import PreTrainedConfig

from dreamray.config.specs import ProjectorSpec


@dataclass(frozen=True)
class DreamLLMConfig:
    """Everything besides the LLM's own config that rebuilds a DreamLLM from an artifact dir."""

    num_dream_queries: int
    vision_select_layer: int
    vision_projector: ProjectorSpec
    condition_projector: ProjectorSpec
    condition_dropout: float
    snr_gamma: float | None
    vision_config: dict[str, Any]
    image_processor: dict[str, Any]
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``dreamllm`` section of an artifact's ``config.json``)."""
        out = asdict(self)
        out["vision_projector"] = self.vision_projector.model_dump()
        out["condition_projector"] = self.condition_projector.model_dump()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DreamLLMConfig:
        """Inverse of `to_dict`.

        Raises:
            ValueError: naming every missing and unknown key.
        """
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"dreamllm config: missing keys {missing}, unknown keys {unknown}")
        values = dict(data)
        for key in ("vision_projector", "condition_projector"):
            values[key] = ProjectorSpec(**data[key])
        return cls(**values)


DREAMLLM_MODEL_TYPE = "dreamllm"
DREAMLLM_ARCHITECTURE = "DreamLLM"
LLM_CONFIG_KEY = "llm_config"


class DreamLLMHFConfig(PreTrainedConfig):
    """An artifact's ``config.json`` as a Hugging Face config (``model_type`` ``dreamllm``).

    The LLM's own config is nested under ``llm_config`` as the LLM saved it (any causal LM
    type; `dreamray.model.artifact.llm_config_of` rebuilds it) and the plugin section under
    ``dreamllm`` (`DreamLLMConfig.to_dict`), so `AutoConfig` / `AutoModelForCausalLM` can route
    the dir to `DreamLLM` (`dreamray.model.hf_registration`). ``tie_word_embeddings`` repeats
    the LLM's at the top: callers that ask an artifact's config whether ``lm_head`` has weights
    of its own (the preflight) get the LLM's answer.
    """

    model_type = DREAMLLM_MODEL_TYPE

    llm_config: dict | None = None
    dreamllm: dict | None = None
    tie_word_embeddings: bool = False


def artifact_config_dict(
    llm_config: dict[str, Any], plugins: DreamLLMConfig, tie_word_embeddings: bool
) -> dict[str, Any]:
    """The ``config.json`` of an artifact: the LLM's saved config nested under the DreamLLM type.

    Args:
        llm_config: what the LLM's ``save_pretrained`` wrote to ``config.json``.
        plugins: the plugin configuration.
        tie_word_embeddings: whether the LLM's ``lm_head`` is its input embedding (written out:
            the LLM's file omits values equal to its class default).

    Returns:
        A JSON-ready dict that `DreamLLMHFConfig` reads.
    """
    return {
        "model_type": DREAMLLM_MODEL_TYPE,
        "architectures": [DREAMLLM_ARCHITECTURE],
        "tie_word_embeddings": tie_word_embeddings,
        LLM_CONFIG_KEY: llm_config,
        "dreamllm": plugins.to_dict(),
    }
