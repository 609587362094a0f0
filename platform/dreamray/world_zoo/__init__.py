"""A pretrained tiny zoo on the shapes world: the random zoo's layouts, with weights that know
the world, so that the tiny recipe visibly learns (see `dreamray.data.world`).

`build_world_zoo(out, settings, seed)` writes, like `dreamray.zoo.build_tiny_zoo`:

- ``llm/``: the tiny Llama and a BPE tokenizer, trained on the world's captions, drawing
  instructions and question/answer turns that answer from a caption earlier in the line;
- ``clip/``: the tiny CLIP vision tower, trained with a head shared by its penultimate-layer
  patch features that names the object on each patch (colour, shape, size, position, or
  "empty") and the values the whole scene shows, plus its image processor at the world's
  image size;
- ``sd/``: the SD 2.1 layout: ``vae/`` trained to reconstruct scenes, ``unet/`` trained as a
  text-conditional denoiser (v-prediction) with ``text_encoder/`` (tiny CLIP text model) and
  ``tokenizer/``, ``scheduler/`` and ``model_index.json``;
- ``world_zoo_report.json``: what each tower learned, measured at build time (loss curves,
  the patch head's held-out accuracy, the attribute reader on VAE reconstructions and on
  the UNet's own text-conditioned samples).

Same seed and settings, same zoo: the stamp records both, and a matching zoo is reused.
CLI: ``python -m dreamray.world_zoo --out DIR``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dreamray import zoo
from dreamray.data.world.scene import WorldSpec

ZOO_KIND = "world"
REPORT_FILE = "world_zoo_report.json"
# Bumped when the same settings train other towers (corpus, losses), so an older zoo is rebuilt.
WORLD_ZOO_VERSION = 3


@dataclass(frozen=True)
class WorldZooSettings:
    """How much each tower trains (the defaults: ~7 min on 2 CPU cores).

    Attributes:
        image_size: the world's image side = CLIP's input = the SD resolution (32 or 64).
        num_scenes: rendered training scenes (single-object: the prompts of the evals).
        vision_scenes: rendered scenes of 1-3 objects the vision tower trains on.
        llm_steps, vision_steps, vae_steps, unet_steps: optimizer steps per tower.
        batch_size: samples per step.
        check_samples: held-out prompts the zoo's UNet is checked on.
    """

    image_size: int = 32
    num_scenes: int = 2000
    vision_scenes: int = 6000
    llm_steps: int = 1500
    vision_steps: int = 1500
    vae_steps: int = 200
    unet_steps: int = 700
    batch_size: int = 32
    check_samples: int = 60

    def __post_init__(self) -> None:
        if self.image_size not in (32, 64):
            raise ValueError(f"image_size {self.image_size}: the world zoo is built at 32 or 64")
        counts = {k: v for k, v in asdict(self).items() if k != "image_size"}
        bad = [f"{k}={v}" for k, v in counts.items() if v < 1]
        if bad:
            raise ValueError(f"world zoo settings must be >= 1: {', '.join(bad)}")


def build_world_zoo(out: Path, settings: WorldZooSettings = WorldZooSettings(), seed: int = 0,
                    progress: bool = True) -> zoo.ZooPaths:
    """Build (or reuse) the pretrained world zoo under `out`.

    Args:
        out: directory to write ``llm/``, ``clip/``, ``sd/``, the report and the stamp into.
        settings: the training budget.
        seed: the seed of every sample, init and batch.
        progress: tqdm bars per tower.

    Returns:
        The paths of the three model dirs.

    Raises:
        FileExistsError: `out` holds model dirs that no zoo stamp accounts for.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = (zoo.LLM_DIR, zoo.VISION_DIR, zoo.DIFFUSION_DIR, REPORT_FILE)
    stamp = {"kind": ZOO_KIND, "seed": seed, "version": WORLD_ZOO_VERSION,
             "settings": asdict(settings)}
    if zoo.check_reusable(out, names[:3], stamp):
        return zoo.ZooPaths(out / zoo.LLM_DIR, out / zoo.VISION_DIR, out / zoo.DIFFUSION_DIR)
    with tempfile.TemporaryDirectory(prefix=".zoo-build-", dir=out) as tmp:
        rng_state = torch.random.get_rng_state()
        try:
            report = _train_towers(Path(tmp), settings, seed, progress)
        finally:
            torch.random.set_rng_state(rng_state)
        (Path(tmp) / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        zoo.install_zoo(Path(tmp), out, names, stamp)
    return zoo.ZooPaths(out / zoo.LLM_DIR, out / zoo.VISION_DIR, out / zoo.DIFFUSION_DIR)


def _train_towers(staging: Path, settings: WorldZooSettings, seed: int,
                  progress: bool) -> dict[str, Any]:
    # One after the other on all threads: the UNet's weights depend on the thread count
    # (float reduction order), and the toy recipe's measured numbers were made with these.
    spec = WorldSpec(image_size=settings.image_size)
    return {**_train_comprehension_towers(staging, spec, settings, seed, progress),
            **_train_diffusion_towers(staging, spec, settings, seed, progress)}


def _train_comprehension_towers(staging: Path, spec: WorldSpec, settings: WorldZooSettings,
                                seed: int, progress: bool) -> dict[str, Any]:
    from dreamray.world_zoo import towers
    from dreamray.world_zoo.samples import world_corpus, world_samples, world_scenes

    # the text covers multi-object scenes too: counts, and questions about each shape
    corpus = world_corpus(world_scenes(spec, settings.num_scenes, seed + 1, spec.max_objects), seed)
    b = settings.batch_size
    llm = towers.train_llm(staging / zoo.LLM_DIR, corpus, settings.llm_steps, b, seed, progress)
    # the vision tower sees scenes of 1-3 objects: comprehension data has them
    scenes = world_samples(spec, settings.vision_scenes, seed + 2, spec.max_objects)
    vision, heldout = towers.train_vision(staging / zoo.VISION_DIR, scenes, spec,
                                          settings.vision_steps, b, seed, progress)
    return {"llm": llm.as_dict(), "vision": {**vision.as_dict(), **heldout}}


def _train_diffusion_towers(staging: Path, spec: WorldSpec, settings: WorldZooSettings,
                            seed: int, progress: bool) -> dict[str, Any]:
    from dreamray.world_zoo import checks, diffusion
    from dreamray.world_zoo.samples import world_samples

    samples = world_samples(spec, settings.num_scenes, seed)
    sd, b = staging / zoo.DIFFUSION_DIR, settings.batch_size
    vae, vae_curve, latents = diffusion.train_vae(samples, spec, settings.vae_steps, b, seed,
                                                  progress)
    text_encoder, tok = diffusion.text_encoder_and_tokenizer(sd / "tokenizer", samples.captions,
                                                             seed)
    unet, unet_curve = diffusion.train_unet(latents, text_encoder, tok, samples,
                                            settings.unet_steps, b, seed, progress)
    diffusion.save_diffusion(sd, vae, text_encoder, unet)
    check = checks.check_diffusion(vae, unet, text_encoder, tok, spec, settings.check_samples,
                                   seed)
    return {"vae": {**vae_curve.as_dict(), "reconstruction": check["reconstruction"]},
            "unet": {**unet_curve.as_dict(), "generation": check["generation"]}}
