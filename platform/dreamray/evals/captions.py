"""The caption manifest of a text-to-image FID run: one fixed caption per image, shared by seeds.

The reference drew its captions with a different shuffle for the caption dump, for each seed and
for the CLIP selection, so files with the same index could come from different captions. Here the
manifest is built once (a seeded sample of images, a seeded choice of one caption each), written
to disk, and every seed, the CLIP re-ranking and the protocol card read that file. An item's
generated image for a seed has the id `<item_id>/seed<seed>` in the results store.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dreamray.files import atomic_write_json, sha256_file

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A caption source or manifest that cannot be used."""


@dataclass(frozen=True)
class CaptionItem:
    """One prompt of the run."""

    item_id: str
    image_id: int
    file_name: str
    caption: str


@dataclass(frozen=True)
class CaptionManifest:
    """The items and where they came from."""

    items: list[CaptionItem]
    meta: dict[str, Any]

    def generation_ids(self, seeds: list[int]) -> list[str]:
        """Result-store ids of every (item, seed) image, seed-major."""
        return [generation_id(item.item_id, s) for s in seeds for item in self.items]


def generation_id(item_id: str, seed: int) -> str:
    """The results-store id of one generated image."""
    return f"{item_id}/seed{seed}"


def build_coco_manifest(captions_json: str | Path, num_samples: int, seed: int) -> CaptionManifest:
    """Sample `num_samples` images of a COCO captions file and one caption for each.

    Args:
        captions_json: e.g. `annotations/captions_val2014.json` (`images` + `annotations`).
        num_samples: how many images (30000 in the paper's protocol).
        seed: the sampling seed (fixes both the images and their captions).

    Returns:
        The manifest; items are in sampling order and ids are `coco<image_id>`.

    Raises:
        ManifestError: an unreadable file, or fewer captioned images than `num_samples`.
    """
    try:
        data = json.loads(Path(captions_json).read_text())
    except (OSError, ValueError) as err:
        raise ManifestError(f"{captions_json}: not a readable JSON file: {err}") from err
    _check_coco(captions_json, data)
    try:
        names = {int(im["id"]): im["file_name"] for im in data["images"]}
        annotations = data["annotations"]
    except (ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"{captions_json}: not a COCO captions file: {err}") from err
    captions: dict[int, list[tuple[int, str]]] = {}
    for ann in annotations:
        captions.setdefault(int(ann["image_id"]), []).append((int(ann["id"]), ann["caption"]))
    image_ids = sorted(i for i in captions if i in names)
    if num_samples > len(image_ids):
        raise ManifestError(
            f"{captions_json}: {num_samples} samples asked, only {len(image_ids)} captioned images"
        )
    rng = random.Random(seed)
    chosen = rng.sample(image_ids, num_samples)
    items = []
    for image_id in chosen:
        caption = rng.choice(sorted(captions[image_id]))[1].strip()
        items.append(CaptionItem(f"coco{image_id}", image_id, names[image_id], caption))
    meta = {
        "version": MANIFEST_VERSION,
        "source": str(captions_json),
        "source_sha256": sha256_file(captions_json),
        "num_samples": num_samples,
        "seed": seed,
    }
    return CaptionManifest(items, meta)


_COCO_KEYS = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "caption")}


def _check_coco(source: str | Path, data: object) -> None:
    """Name the first thing a COCO captions file lacks (top-level list or an entry's key).

    Raises:
        ManifestError: naming the missing list or key and the entry's index.
    """
    if not isinstance(data, dict):
        raise ManifestError(
            f"{source}: not a COCO captions file: expected an object with 'images' and "
            f"'annotations', got {type(data).__name__}"
        )
    for top, keys in _COCO_KEYS.items():
        if top not in data or not isinstance(data[top], list):
            raise ManifestError(f"{source}: not a COCO captions file: no '{top}' list")
        for i, entry in enumerate(data[top]):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise ManifestError(
                    f"{source}: not a COCO captions file: {top}[{i}] has no {', '.join(missing)}"
                )


def write_manifest(path: str | Path, manifest: CaptionManifest) -> str:
    """Write a manifest as JSON (atomically).

    Args:
        path: destination.
        manifest: the manifest.

    Returns:
        The written file's sha256, the id the protocol card records.
    """
    atomic_write_json(path, {"meta": manifest.meta, "items": [asdict(i) for i in manifest.items]})
    return sha256_file(path)


def read_manifest(path: str | Path) -> CaptionManifest:
    """Read a manifest written by `write_manifest`.

    Raises:
        ManifestError: unreadable, of another version, or with duplicate item ids.
    """
    try:
        data = json.loads(Path(path).read_text())
        items = [CaptionItem(**item) for item in data["items"]]
        meta = data["meta"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"{path}: not a caption manifest: {err}") from err
    if meta.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {meta.get('version')}, expected 1")
    ids = [i.item_id for i in items]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"{path}: duplicate item ids")
    return CaptionManifest(items, meta)
