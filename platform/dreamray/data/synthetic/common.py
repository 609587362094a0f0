"""Shared pieces of the synthetic writers: seeded randomness, text, the truth record, layouts."""

from __future__ import annotations

import hashlib
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamray.data.synthetic.images import GOOD_KINDS, make_image

TRUTH_DIR = "_truth"

_WORDS = (
    "a dog cat red blue small large photo of the on in with near river mountain city street "
    "tree house car person child woman man sitting standing running bright dark old new "
    "painting sky cloud sunset beach boat table food plate window garden flower bird"
).split()


@dataclass(frozen=True)
class SourceLayout:
    """Where one synthetic source lies and how to convert it.

    Attributes:
        source: the source name.
        converter: the converter's command-line name.
        inputs: input files for `--input`.
        images: the image directory for `--images` (None if images are embedded).
    """

    source: str
    converter: str
    inputs: list[Path]
    images: Path | None


class Rng:
    """Python and numpy generators seeded from (seed, source name): sources are independent."""

    def __init__(self, seed: int, name: str):
        mixed = (seed * 1_000_003 + zlib.crc32(name.encode())) & 0xFFFFFFFF
        self.py = random.Random(mixed)
        self.np = np.random.default_rng(mixed)

    def sentence(self, lo: int = 4, hi: int = 12) -> str:
        words = [self.py.choice(_WORDS) for _ in range(self.py.randint(lo, hi))]
        return " ".join(words).capitalize() + "."

    def image(self, index: int) -> bytes:
        """A good image; the mode cycles with `index` so every source has every mode."""
        return make_image(self.np, GOOD_KINDS[index % len(GOOD_KINDS)])

    def hex_name(self, suffix: str = ".jpg") -> str:
        return f"{self.py.getrandbits(48):012x}{suffix}"


def sha256(data: bytes) -> str:
    """Hex sha256 of bytes (images are compared by hash in the truth files)."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Truth:
    """What a correct conversion of one synthetic source must produce.

    Attributes:
        source: the source name.
        rows: id -> expected fields (kind, texts, roles, instruction, image_sha256, image_after).
        rejects: id -> expected reject reason (planted faults and img2dataset failed rows).
        bad_files: file name -> "unreadable" (file-level faults: need --skip-bad-files).
    """

    source: str
    rows: dict[str, dict] = field(default_factory=dict)
    rejects: dict[str, str] = field(default_factory=dict)
    bad_files: dict[str, str] = field(default_factory=dict)

    def expect(
        self,
        rid: str,
        kind: str,
        texts: list[str],
        images: list[bytes],
        image_after: list[int],
        roles: list[str] | None = None,
        instruction: str | None = None,
    ) -> None:
        """Record a row that must come out unchanged."""
        self.rows[rid] = {
            "kind": kind,
            "texts": texts,
            "roles": roles or [],
            "instruction": instruction,
            "image_sha256": [sha256(b) for b in images],
            "image_after": image_after,
        }

    def write(self, out: Path) -> Path:
        """Write `<out>/_truth/<source>.json` and return its path."""
        path = out / TRUTH_DIR / f"{self.source}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "source": self.source,
            "rows": self.rows,
            "rejects": self.rejects,
            "bad_files": self.bad_files,
        }
        path.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
        return path


def read_truth(out: str | Path, source: str) -> dict:
    """Read a synthetic source's truth file.

    Args:
        out: the synthetic output directory.
        source: the source name.

    Returns:
        The truth dict (see `Truth`).
    """
    return json.loads((Path(out) / TRUTH_DIR / f"{source}.json").read_text())


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file, creating its parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
