"""Tiny random base models in the real Hugging Face / diffusers layouts, and real config-only dirs.

`build_tiny_zoo` writes three directories that load exactly like the real towers do:

- ``llm/``: an HF Llama causal LM (or Mistral / Qwen2: ``family``, `dreamray.zoo_llm`;
  safetensors) with a byte-level BPE tokenizer that has bos/eos/unk but no pad and no DreamLLM
  tokens (like Vicuna: the model adds them);
- ``clip/``: an HF ``CLIPVisionModel`` plus its ``CLIPImageProcessor`` config;
- ``sd/``: a diffusers Stable Diffusion dir with ``unet/``, ``vae/``, ``scheduler/`` and
  ``model_index.json``.

Same seed, same bytes: every file is reproducible (checked by sha256 in the tests), so a tiny
recipe's stage hashes are stable across machines. `build_real_configs` writes the configs of the
real 7B recipe's towers (Vicuna-7B v1.1, CLIP ViT-L/14, SD 2.1-base) without weights, for planning
memory and shapes on the meta device.

CLI: ``python -m dreamray.zoo tiny --out DIR [--seed S]`` and
``python -m dreamray.zoo real-configs --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamray.contracts import MODEL_INDEX_FILE
from dreamray.files import atomic_write_json, publish_dir
from dreamray.model.layouts import clip_processor, model_index, sd_scheduler_kwargs

# the LLM part lives in `zoo_llm`; re-exported here, where the zoo's builders are looked up
from dreamray.zoo_llm import (  # noqa: F401
    LLAMA,
    LLM_FAMILIES,
    MISTRAL,
    QWEN2,
    TINY_VOCAB_SIZE,
    LlmFamily,
    build_tiny_llm,
    build_tokenizer,
    tiny_llm_config,
)

ZOO_VERSION = 1
STAMP_FILE = "zoo_stamp.json"
LLM_DIR, VISION_DIR, DIFFUSION_DIR = "llm", "clip", "sd"

@dataclass(frozen=True)
class ZooPaths:
    """The three base-model directories of a zoo."""

    llm: Path
    vision: Path
    diffusion: Path


def _paths(out: Path) -> ZooPaths:
    return ZooPaths(llm=out / LLM_DIR, vision=out / VISION_DIR, diffusion=out / DIFFUSION_DIR)


def tiny_vision_config(image_size: int = 32) -> Any:
    """The tiny CLIP vision tower's config (patch 8, width 32, 2 layers)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    )


def _build_vision(out_dir: Path, seed: int) -> None:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModel

    torch.manual_seed(seed + 1)
    CLIPVisionModel(tiny_vision_config()).save_pretrained(out_dir)
    clip_processor(CLIPImageProcessor, 32).save_pretrained(out_dir)


# The tiny UNet's condition width: what the condition projector (and a text encoder) emit.
TINY_CROSS_ATTENTION_DIM = 32


def tiny_unet(latent_size: int = 8) -> Any:
    """The tiny SD-2.x-style UNet (two blocks, linear cross-attention projections)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        norm_num_groups=32,
        use_linear_projection=True,
    )


def tiny_vae(image_size: int = 16) -> Any:
    """The tiny KL autoencoder: 4 latent channels, one 2x downsampling (latents = side / 2)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=image_size,
    )


def write_scheduler_and_index(out_dir: Path, text_encoder: bool = False,
                              prediction_type: str = "epsilon") -> None:
    """The SD dir's `scheduler/` (SD 2.x's DDPM schedule) and `model_index.json`.

    Args:
        out_dir: the SD directory.
        text_encoder: whether it also holds `text_encoder/` and `tokenizer/`.
        prediction_type: the UNet's target, recorded in the scheduler config.
    """
    import diffusers
    from diffusers import DDPMScheduler

    DDPMScheduler(**sd_scheduler_kwargs(prediction_type)).save_pretrained(out_dir / "scheduler")
    index = model_index(diffusers.__version__, "DDPMScheduler")
    if text_encoder:
        index.update(text_encoder=["transformers", "CLIPTextModel"],
                     tokenizer=["transformers", "PreTrainedTokenizerFast"])
    atomic_write_json(out_dir / MODEL_INDEX_FILE, index)


def _build_diffusion(out_dir: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed + 2)
    tiny_unet().save_pretrained(out_dir / "unet")
    torch.manual_seed(seed + 3)
    tiny_vae().save_pretrained(out_dir / "vae")  # 16 px = unet 8 latents x 2
    write_scheduler_and_index(out_dir)


def _read_stamp(out: Path) -> dict[str, Any] | None:
    path = out / STAMP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def install_zoo(staging: Path, out: Path, names: tuple[str, ...], stamp: dict[str, Any]) -> None:
    """Move freshly built dirs from `staging` into `out`, stamp last: a half-built zoo is never
    stamped.

    Args:
        staging: where the dirs were built (same filesystem as `out`).
        out: the zoo directory.
        names: the dirs to move.
        stamp: what the zoo is (kind, seed, version, settings).
    """
    for name in names:
        publish_dir(staging / name, out / name)
    atomic_write_json(out / STAMP_FILE, stamp)


def check_reusable(out: Path, names: tuple[str, ...], stamp: dict[str, Any]) -> bool:
    """True if `out` already holds this exact zoo; raise if it holds something we did not make.

    Args:
        out: the zoo directory.
        names: its model dirs.
        stamp: the stamp a matching zoo carries.

    Returns:
        Whether the zoo can be reused as it is.

    Raises:
        FileExistsError: `out` has model dirs but no stamp.
    """
    existing = _read_stamp(out)
    if existing == stamp and all((out / n).is_dir() for n in names):
        return True
    if existing is None and any((out / n).exists() for n in names):
        raise FileExistsError(
            f"{out} already has some of {list(names)} but no {STAMP_FILE}: not a zoo dir, "
            "refusing to overwrite it"
        )
    return False


def build_tiny_zoo(out: Path, seed: int = 0, family: LlmFamily = LLAMA) -> ZooPaths:
    """Build (or reuse) the tiny random zoo under `out`.

    Args:
        out: directory to write ``llm/``, ``clip/``, ``sd/`` and a stamp file into.
        seed: weight-init seed; the tokenizer does not depend on it (same vocab for every seed).
        family: the base LLM's family (Llama by default; the stamp names any other).

    Returns:
        The paths of the three model dirs.

    Raises:
        FileExistsError: when `out` holds model dirs that no zoo stamp accounts for.
    """
    import torch

    def build(staging: Path) -> None:
        # the RNG state is global: save and restore it so building a zoo has no side effect
        rng_state = torch.random.get_rng_state()
        try:
            build_tiny_llm(staging / LLM_DIR, seed, family)
            _build_vision(staging / VISION_DIR, seed)
            _build_diffusion(staging / DIFFUSION_DIR, seed)
        finally:
            torch.random.set_rng_state(rng_state)

    stamp: dict[str, Any] = {"kind": "tiny", "seed": seed, "version": ZOO_VERSION}
    if family != LLAMA:  # Llama zoos keep the stamp they always had
        stamp["llm_family"] = family.name
    return _build_stamped(Path(out), stamp, build)


def build_real_configs(out: Path) -> ZooPaths:
    """Write config-only dirs (no weights) of the real towers of the 7B recipe.

    Vicuna-7B v1.1 (``llm/config.json``), CLIP ViT-L/14 at 224 px (``clip/config.json`` plus the
    image processor), SD 2.1-base (``sd/unet``, ``sd/vae``, ``sd/scheduler`` configs and
    ``model_index.json``), with the released files' values.

    Args:
        out: directory to write ``llm/``, ``clip/`` and ``sd/`` into.

    Returns:
        The paths of the three config dirs.

    Raises:
        FileExistsError: when `out` holds model dirs that no zoo stamp accounts for.
    """
    from dreamray import zoo_real

    def build(staging: Path) -> None:
        zoo_real.write_llm(staging / LLM_DIR)
        zoo_real.write_vision(staging / VISION_DIR)
        zoo_real.write_diffusion(staging / DIFFUSION_DIR)

    return _build_stamped(Path(out), {"kind": "real-configs", "version": ZOO_VERSION}, build)


def _build_stamped(out: Path, stamp: dict[str, Any], build: Callable[[Path], None]) -> ZooPaths:
    """Reuse the zoo under `out` if its stamp matches, else `build` it in a staging dir next to
    it and install it (the stamp last)."""
    out.mkdir(parents=True, exist_ok=True)
    names = (LLM_DIR, VISION_DIR, DIFFUSION_DIR)
    if not check_reusable(out, names, stamp):
        with tempfile.TemporaryDirectory(prefix=".zoo-build-", dir=out) as tmp:
            build(Path(tmp))
            install_zoo(Path(tmp), out, names, stamp)
    return _paths(out)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``tiny --out DIR [--seed S] [--family F]`` or ``real-configs --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m dreamray.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tiny = sub.add_parser("tiny", help="tiny random models with weights")
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--seed", type=int, default=0)
    families = {f.name: f for f in LLM_FAMILIES}
    tiny.add_argument("--family", choices=sorted(families), default=LLAMA.name,
                      help="the base LLM's family (default: %(default)s)")
    real = sub.add_parser("real-configs", help="config-only dirs of the real 7B towers")
    real.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "tiny":
        paths = build_tiny_zoo(args.out, seed=args.seed, family=families[args.family])
    else:
        paths = build_real_configs(args.out)
    print(json.dumps({k: str(v) for k, v in vars(paths).items()}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
