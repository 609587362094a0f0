"""Training-time image transforms: encoded bytes -> RGB -> CLIP pixels and SD pixels (pure).

- Decoding converts every mode to 8-bit RGB here (converters keep the source bytes untouched):
  transparency is composited on white (converting RGBA by dropping alpha turns transparent
  logos black), 16-bit greyscale is scaled down (a plain convert clips it to white), CMYK, L, P
  and the rest go through PIL's conversion.
- CLIP side: the `CLIPImageProcessor` saved in the vision dir. Its resize and crop run here and
  give uint8 (that is what the processor itself produces before rescaling); its rescale and
  mean/std normalisation (`clip_normalization`) run in the collator: the same numbers to float
  precision, and 4x fewer bytes through the object store.
- SD side: resize the shorter side to R (bilinear), center crop R x R, optional horizontal flip.
  It is returned as uint8 [3, R, R]; the collator maps it to [-1, 1] (float32 is 4x the bytes
  to move through the object store). R comes from the diffusion dir (UNet sample size x VAE
  downsampling, `dreamray.model.layouts.diffusion_resolution`), 512 for SD 2.1-base.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dreamray.data.sequence import stable_unit
from dreamray.model.layouts import diffusion_resolution

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def decode_rgb(data: bytes) -> Image.Image:
    """Decode encoded image bytes to an 8-bit RGB image.

    Args:
        data: encoded bytes (JPEG, PNG, WebP, ...).

    Returns:
        A loaded RGB image.

    Raises:
        Exception: whatever PIL raises for bytes it cannot decode (callers count it as a skip).
    """
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = (np.asarray(image, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def sd_pixels(image: Image.Image, size: int, flip: bool) -> np.ndarray:
    """SD-side transform up to uint8: shorter side to `size` (bilinear), center crop, flip.

    Args:
        image: an RGB image.
        size: R.
        flip: mirror horizontally.

    Returns:
        uint8 array [3, size, size].
    """
    width, height = image.size
    scale = size / min(width, height)
    # the shorter side is exactly `size`; the longer one rounds like torchvision's Resize
    new_size = (size, int(height * scale)) if width <= height else (int(width * scale), size)
    if new_size != image.size:
        image = image.resize(new_size, Image.BILINEAR)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


class ImageTransforms:
    """Both transforms of one stage, loaded once per process."""

    def __init__(
        self, vision_path: str | Path, diffusion_path: str | Path, random_flip: bool, seed: int
    ) -> None:
        """Args:
        vision_path: HF CLIP vision dir holding the image processor config.
        diffusion_path: diffusers SD dir.
        random_flip: `DataSpec.random_flip`: flip SD targets with p = 0.5.
        seed: `DataSpec.seed`; a flip is a pure function of (seed, sample id, image index).
        """
        from transformers import CLIPImageProcessor  # heavy: only where transforms run

        self.clip_processor = CLIPImageProcessor.from_pretrained(str(vision_path))
        crop = self.clip_processor.crop_size
        self.clip_shape = (3, int(crop["height"]), int(crop["width"]))
        self.sd_size = diffusion_resolution(diffusion_path)
        self.random_flip = random_flip
        self.seed = seed

    def clip_normalization(self) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
        """The processor's second half, as numbers: x * rescale, then (x - mean) / std.

        Returns:
            (rescale factor, mean per channel, std per channel); identity parts when the
            processor's config switches rescaling or normalising off.
        """
        proc = self.clip_processor
        rescale = float(proc.rescale_factor) if proc.do_rescale else 1.0
        if not proc.do_normalize:
            return rescale, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return rescale, tuple(map(float, proc.image_mean)), tuple(map(float, proc.image_std))

    def clip_pixels(self, images: list[Image.Image]) -> np.ndarray:
        """The CLIP processor's resize and crop (see `clip_normalization` for the rest).

        Args:
            images: RGB images (may be empty).

        Returns:
            uint8 [len(images), 3, H, W].
        """
        if not images:
            return np.zeros((0, *self.clip_shape), dtype=np.uint8)
        out = self.clip_processor(
            images=images, return_tensors="np", do_rescale=False, do_normalize=False
        )["pixel_values"]
        out = np.asarray(out)
        if out.dtype == np.uint8:  # resizing works on uint8 images: the usual case
            return out
        # a float backend: round. Not on uint8, where np.rint runs numpy's float16 loop
        # (as slow as the resize and crop themselves)
        return np.rint(out).clip(0, 255).astype(np.uint8)

    def sd_pixels(self, image: Image.Image, sample_id: str, image_index: int) -> np.ndarray:
        """SD-side transform of one image (flip decided per sample and image).

        Returns:
            uint8 [3, R, R].
        """
        flip = self.random_flip and stable_unit(self.seed, sample_id, image_index, "flip") < 0.5
        return sd_pixels(image, self.sd_size, flip)

    def sample_pixels(
        self, sample_id: str, images: list[bytes], clip: list[int], sd: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode the images a sample uses (each once) and apply both transforms.

        Args:
            sample_id: the row id (for the flip).
            images: the row's encoded images.
            clip: indices of the CLIP inputs, in sequence order.
            sd: indices of the SD targets, in sequence order.

        Returns:
            (clip uint8 [len(clip), 3, H, W], sd uint8 [len(sd), 3, R, R]).

        Raises:
            Exception: from decoding or transforming (the caller skips the sample).
        """
        decoded = {i: decode_rgb(images[i]) for i in sorted(set(clip) | set(sd))}
        clip_out = self.clip_pixels([decoded[i] for i in clip])
        sd_out = [self.sd_pixels(decoded[i], sample_id, i) for i in sd]
        size = self.sd_size
        sd_arr = np.stack(sd_out) if sd_out else np.zeros((0, 3, size, size), dtype=np.uint8)
        return clip_out, sd_arr
