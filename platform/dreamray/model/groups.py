"""Trainable parameter groups of a DreamLLM: the one place their module prefixes are spelled.

This module must stay importable without torch: the config layer validates group names
against ``GROUP_NAMES``.
"""

GROUP_NAMES: tuple[str, ...] = (
    "llm",
    "embed_tokens",
    "lm_head",
    "vision_encoder",
    "vision_projector",
    "dream_queries",
    "condition_projector",
    "unet",
    "vae",
)
