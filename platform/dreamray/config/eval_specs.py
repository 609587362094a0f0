"""The eval stages' specs: what `coco_fid`, `vqa` and `attribute_match` run with (their
protocol defaults live here and nowhere else: the eval CLIs take theirs from these classes).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from dreamray.config.base import Spec

FidProtocol = Literal["clean", "legacy_pytorch", "dreamllm"]
FID_PROTOCOLS = get_args(FidProtocol)
VqaBenchmark = Literal["vqav2", "okvqa", "textvqa", "vizwiz"]
VQA_BENCHMARKS = get_args(VqaBenchmark)
VqaPreset = Literal["vqav2", "okvqa", "textvqa", "vizwiz_val", "vizwiz_test", "conversation"]
VQA_PRESETS = get_args(VqaPreset)
VqaVariant = Literal["official", "official_2021", "lmms", "dreamllm", "dreamllm_substring"]
VQA_VARIANTS = get_args(VqaVariant)
PAPER_SEEDS = (42, 43, 44, 45, 46, 47, 48, 49)


class CocoFidParams(Spec):
    """COCO text-to-image FID (the paper's protocol by default); paths resolve against `root`."""

    captions: str = Field(description="COCO captions json, e.g. captions_val2014.json")
    ref_stats: str | None = Field(None, description="reference .npz (mu, sigma)")
    ref_images: str | None = Field(None, description="reference image folder (instead)")
    protocol: FidProtocol = "dreamllm"
    feature_extractor: str = Field("inception", pattern=r"^(inception|tiny:\d+)$")
    inception_weights: str | None = Field(None, description="local Inception file")
    num_samples: int = Field(30000, ge=2)
    manifest_seed: int = 0
    seeds: list[int] = Field(default_factory=lambda: list(PAPER_SEEDS), min_length=1)
    num_inference_steps: int = Field(150, ge=1)
    guidance_scale: float = Field(2.0, ge=0.0)
    scheduler: Literal["ddpm", "ddim"] = Field("ddpm", description="the reference's: DDPM")
    resolution: int = Field(512, ge=8)
    clip_rerank: bool = Field(True, description="best of the seeds by CLIP score (>1 seed)")
    clip_model: str | None = Field(None, description="CLIP ViT-L/14 dir for the re-ranking")
    generation_batch_size: int = Field(24, ge=1)
    feature_batch_size: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _one_reference_and_a_ranker(self) -> CocoFidParams:
        problems = []
        if (self.ref_stats is None) == (self.ref_images is None):
            problems.append("give exactly one of ref_stats and ref_images")
        if self.clip_rerank and len(self.seeds) > 1 and self.clip_model is None:
            problems.append("clip_rerank over several seeds needs clip_model")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"duplicate seeds: {self.seeds}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def local_paths(self) -> dict[str, str]:
        """Field name -> local path, for every path this task reads."""
        names = ("captions", "ref_stats", "ref_images", "inception_weights", "clip_model")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class VqaParams(Spec):
    """A VQA benchmark (the reference's prompts and 5-beam decoding by default)."""

    benchmark: VqaBenchmark
    questions: str = Field(description="question file (single-file formats: the file)")
    annotations: str | None = Field(None, description="VQA-API annotations; none on test")
    images: str = Field(description="folder the question file's image names are relative to")
    split: Literal["val", "test"] = "val"
    omni_format: bool = Field(False, description="questions in the reference's OMNI format")
    preset: VqaPreset | None = Field(
        None, description="prompt preset; null: the benchmark's (vizwiz: by split)"
    )
    variant: VqaVariant = "official"
    num_beams: int = Field(5, ge=1)
    max_new_tokens: int = Field(1024, ge=1)
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _annotations_match_split(self) -> VqaParams:
        if self.split == "test" and self.annotations is not None:
            raise ValueError("a test split has no annotations (it is scored by EvalAI)")
        return self

    def prompt_preset(self) -> str:
        """The preset in effect: `preset`, else the benchmark's reference preset."""
        if self.preset is not None:
            return self.preset
        return f"vizwiz_{self.split}" if self.benchmark == "vizwiz" else self.benchmark

    def local_paths(self) -> dict[str, str]:
        """Field name -> local path, for every path this task reads."""
        names = ("questions", "annotations", "images")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class AttributeMatchParams(Spec):
    """Do generated images show what their prompts ask for? Prompts of a shapes-world COCO set,
    scored by the attribute reader against the set's `world_truth.json`."""

    captions: str = Field(description="the world's COCO captions json")
    truth: str = Field(description="its world_truth.json (prompted object per image id)")
    num_samples: int = Field(64, ge=1)
    manifest_seed: int = 0
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    num_inference_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(2.0, ge=0.0)
    scheduler: Literal["ddpm", "ddim"] = "ddim"
    generation_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _distinct_seeds(self) -> AttributeMatchParams:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"duplicate seeds: {self.seeds}")
        return self

    def local_paths(self) -> dict[str, str]:
        """Field name -> local path, for every path this task reads."""
        return {"captions": self.captions, "truth": self.truth}


MODEL_SOURCE_HELP = (
    "`stage:<name>`, a local artifact dir, or `base`: the untrained starting point of stage I "
    "(the eval stage's `base_model`, plugins drawn with its `seed`)"
)


class CocoFidSpec(Spec):
    """Text-to-image FID of a model artifact."""

    task: Literal["coco_fid"]
    model: str = Field(description=MODEL_SOURCE_HELP)
    params: CocoFidParams


class VqaSpec(Spec):
    """VQA accuracy of a model artifact."""

    task: Literal["vqa"]
    model: str = Field(description=MODEL_SOURCE_HELP)
    params: VqaParams


class AttributeMatchSpec(Spec):
    """Colour / shape / position accuracy of a model artifact's generated images."""

    task: Literal["attribute_match"]
    model: str = Field(description=MODEL_SOURCE_HELP)
    params: AttributeMatchParams


# An evaluation of a model artifact: `task` picks the typed `params`.
EvalSpec = Annotated[CocoFidSpec | VqaSpec | AttributeMatchSpec, Field(discriminator="task")]
