"""`DreamLLMConfig`: what rebuilds a DreamLLM's plugins besides the LLM's own config (the
``dreamllm`` section of an artifact's ``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

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
