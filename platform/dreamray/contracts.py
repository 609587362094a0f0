"""The names the layers agree on, spelled once: trainable groups, plugin modules, artifact and
manifest files, stage kinds and model sources (`base`, `stage:<name>`).

Config validates against these, the model saves and loads with them, the orchestration
plans, merges and publishes with them. Pure: standard library only, importable by every layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Trainable parameter groups; their module prefixes live in `dreamray.model.groups`.
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

# Top-level submodules of `DreamLLM`. The plugin names are also the stems of their artifact
# files (`<name>.bin`), as in the reference.
LLM_MODULE = "llm"
VISION_PLUGIN = "clip_vision_embedding"
DREAM_PLUGIN = "dream_embedding"
DIFFUSION_PLUGIN = "stable_diffusion_head"
PLUGIN_MODULES: tuple[str, ...] = (VISION_PLUGIN, DREAM_PLUGIN, DIFFUSION_PLUGIN)
PLUGIN_FILES: dict[str, str] = {name: f"{name}.bin" for name in PLUGIN_MODULES}

# A model artifact's files (the reference's layout).
CONFIG_FILE = "config.json"
LLM_WEIGHTS = "model.safetensors"
RELEASED_WEIGHTS = "pytorch_model.bin"
PROCESSOR_FILE = "preprocessor_config.json"
# A train stage artifact's Hugging Face model card (`dreamray.model.model_card`).
MODEL_CARD_FILE = "README.md"
# A diffusers pipeline dir's index (`unet/`, `vae/`, `scheduler/`, ...).
MODEL_INDEX_FILE = "model_index.json"
# The tokenizer files Hugging Face may write for the tokenizers we load.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
)

# Every stage artifact's manifest, written last: its presence means the artifact is complete.
STAGE_FILE = "stage.json"

# Stage kinds. A stage without `kind` is a train stage: most of a recipe's stages are.
TRAIN_KIND = "train"
MERGE_KIND = "merge"
EVAL_KIND = "eval"
PRECOMPUTE_KIND = "precompute"
DEFAULT_STAGE_KIND = TRAIN_KIND

# The numbers every optimizer step reports (`dreamray.train.loop.StepMetrics`; a unit test keeps
# the two in step): what a sweep may select its winner by.
STEP_METRICS: tuple[str, ...] = (
    "loss", "lm_loss", "vm_loss", "lr", "grad_norm", "step_time_s", "data_wait_s",
    "tokens_per_s", "samples_per_s", "images_per_s",
)

# Model sources: the recipe's base towers, another stage's artifact, or a local directory.
BASE_SOURCE = "base"
STAGE_REF_PREFIX = "stage:"


@dataclass(frozen=True)
class StageRef:
    """A parsed `stage:<name>` source: the artifact of the stage `name`."""

    name: str

    @classmethod
    def parse(cls, source: str) -> StageRef | None:
        """The reference in `source`, or None when `source` is not `stage:<name>`."""
        if not source.startswith(STAGE_REF_PREFIX):
            return None
        return cls(source[len(STAGE_REF_PREFIX):])

    def __str__(self) -> str:
        return f"{STAGE_REF_PREFIX}{self.name}"


def is_stage_ref(source: str) -> bool:
    """Whether a source string points at another stage's artifact (`stage:<name>`)."""
    return StageRef.parse(source) is not None


def referenced_stages(sources: Iterable[str]) -> list[str]:
    """The stage names of the `stage:<name>` entries of `sources`, in order (others skipped)."""
    refs = (StageRef.parse(s) for s in sources)
    return [r.name for r in refs if r is not None]


def stage_kind(raw_stage: dict) -> str:
    """The kind of a stage as written in a recipe (before validation)."""
    return raw_stage.get("kind", DEFAULT_STAGE_KIND)
