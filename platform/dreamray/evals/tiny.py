"""The tiny recipe's evaluation sets: a COCO-format captions file with reference images, and a
TextVQA-format question file with its images, small enough for the tiny zoo on a laptop CPU.

`python -m dreamray.evals.tiny --out .cache/tiny/evals` writes
    <out>/coco/captions_val2014.json   COCO captions layout (`images` + `annotations`)
    <out>/coco/ref_images/             reference images (varied sizes, modes and formats)
    <out>/textvqa/val.json             TextVQA layout (`data`: question, image_id, 10 answers)
    <out>/textvqa/images/<image_id>.jpg
The files are in the real datasets' layouts, so the eval stages read them through the same
loaders as the real sets; only the sizes differ. Idempotent: an existing set is kept.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dreamray.asset_cli import asset_parser, print_listing
from dreamray.evals.synthetic_images import write_varied_images

_OBJECTS = ("dog", "cat", "red bus", "kite", "pizza", "boat", "train", "horse", "clock", "bird")
_COLOURS = ("red", "green", "blue", "yellow", "white", "black")


@dataclass(frozen=True)
class TinyEvalSets:
    """Where the tiny evaluation sets are (paths for `CocoFidParams` / `VqaParams`)."""

    coco_captions: Path
    coco_ref_images: Path
    textvqa_questions: Path
    textvqa_images: Path


def tiny_eval_paths(out: str | Path) -> TinyEvalSets:
    """The paths `build_tiny_evals(out)` writes (whether or not they exist yet)."""
    out = Path(out)
    return TinyEvalSets(
        coco_captions=out / "coco" / "captions_val2014.json",
        coco_ref_images=out / "coco" / "ref_images",
        textvqa_questions=out / "textvqa" / "val.json",
        textvqa_images=out / "textvqa" / "images",
    )


def _coco_captions(num_images: int, rng: np.random.Generator) -> dict:
    images = [
        {"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(1, num_images + 1)
    ]
    annotations = []
    for image in images:
        thing = _OBJECTS[int(rng.integers(len(_OBJECTS)))]
        for k, colour in enumerate(rng.choice(_COLOURS, size=2, replace=False)):
            annotations.append({"id": 10 * image["id"] + k, "image_id": image["id"],
                                "caption": f"a {colour} {thing} in a field"})
    return {"images": images, "annotations": annotations}


def _textvqa(images_dir: Path, num_questions: int, rng: np.random.Generator) -> dict:
    """One plain-colour image per question; the answer is its colour (9 of 10 annotators)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    data = []
    for i in range(num_questions):
        colour = _COLOURS[int(rng.integers(len(_COLOURS)))]
        image_id = f"tiny{i:04d}"
        Image.new("RGB", (32, 32), colour).save(images_dir / f"{image_id}.jpg", quality=90)
        answers = [colour] * 9 + [_COLOURS[(_COLOURS.index(colour) + 1) % len(_COLOURS)]]
        data.append({"question_id": i, "question": "What color is the image?",
                     "image_id": image_id, "answers": answers})
    return {"dataset_name": "textvqa", "dataset_split": "val", "data": data}


def build_tiny_evals(
    out: str | Path, seed: int = 0, num_images: int = 16, num_questions: int = 8
) -> TinyEvalSets:
    """Write the tiny COCO captions + reference images and TextVQA set (each once).

    Args:
        out: the root (e.g. `.cache/tiny/evals`).
        seed: RNG seed (the same seed writes the same sets).
        num_images: captioned COCO images and reference images.
        num_questions: TextVQA questions (one image each).

    Returns:
        The paths of both sets.
    """
    paths = tiny_eval_paths(out)
    if not paths.coco_captions.is_file():
        paths.coco_captions.parent.mkdir(parents=True, exist_ok=True)
        write_varied_images(paths.coco_ref_images, num_images, seed=seed, min_size=16,
                            max_size=32)
        # the captions last: their presence marks a complete set
        captions = _coco_captions(num_images, np.random.default_rng([seed, 0]))
        paths.coco_captions.write_text(json.dumps(captions))
    if not paths.textvqa_questions.is_file():
        # its own stream: the same set whether or not the COCO set was written first
        questions = _textvqa(paths.textvqa_images, num_questions, np.random.default_rng([seed, 1]))
        paths.textvqa_questions.write_text(json.dumps(questions))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line: write the tiny evaluation sets and print their paths.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        Exit code 0.
    """
    args = asset_parser("dreamray.evals.tiny").parse_args(argv)
    print_listing(vars(build_tiny_evals(args.out, args.seed)), width=18)
    return 0


if __name__ == "__main__":
    sys.exit(main())
