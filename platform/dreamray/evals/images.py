"""Image folders for FID: clean-fid's file list, the files it would skip, a content hash."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from glob import glob
from pathlib import Path

from cleanfid.utils import EXTENSIONS


@dataclass(frozen=True)
class Skip:
    """A file left out of a score, and why."""

    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """`{"path": ..., "reason": ...}`."""
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class ImageListing:
    """The image files of a folder, in clean-fid's order, and the other files found there."""

    folder: str
    files: list[str]
    skipped: list[Skip]


def list_images(folder: str | Path) -> ImageListing:
    """List a folder's images exactly as clean-fid's `get_folder_features` does.

    clean-fid takes every file matching `**/*.<ext>` (recursive, case-sensitive extensions from
    `cleanfid.utils.EXTENSIONS`), sorted by path. Every other regular file is recorded as
    skipped, so that a mistyped folder or a stray file does not go unnoticed.

    Args:
        folder: the image folder.

    Returns:
        The listing.

    Raises:
        FileNotFoundError: the folder does not exist.
    """
    root = str(folder)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    files = sorted(
        path
        for ext in EXTENSIONS
        for path in glob(os.path.join(root, f"**/*.{ext}"), recursive=True)
    )
    chosen = set(files)
    others = sorted(str(p) for p in Path(root).rglob("*") if p.is_file() and str(p) not in chosen)
    skipped = [Skip(p, "not an image file (extension, or a hidden file)") for p in others]
    return ImageListing(folder=root, files=files, skipped=skipped)


def content_hash(files: list[str], root: str | Path, extra: str = "") -> str:
    """A hash of a file list's relative names and bytes (plus `extra`, e.g. the protocol).

    Args:
        files: the files, in a fixed order.
        root: the folder the names are taken relative to (so the hash survives a move).
        extra: any further text that identifies the computation.

    Returns:
        Hex sha256.
    """
    digest = hashlib.sha256(extra.encode())
    for path in files:
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()
