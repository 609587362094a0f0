"""The shapes world's evaluation sets, in the real benchmarks' formats.

- COCO captions (`captions_val2014.json` + `ref_images/`): one single-object scene per image,
  its caption, and `world_truth.json` for the attribute_match eval: `world` (the colours,
  shapes and positions prompts draw from, for chance levels) and `objects` (image id -> the
  object).
- VQAv2 (`questions.json`, `annotations.json`, `images/COCO_val2014_<id:012d>.jpg`): questions
  about colour, shape, position and count; `answer_type` names which, so the VQA eval's
  per-answer-type accuracy reads per attribute; all 10 annotators give the true answer.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from dreamray.asset_cli import asset_parser, print_listing
from dreamray.data.world.scene import WorldSpec, render_scene, sample_scene
from dreamray.data.world.text import caption, questions
from dreamray.metrics.vqa import NUM_ANSWERS

COCO_SUBTYPE = "val2014"


@dataclass(frozen=True)
class WorldEvalSets:
    """Where the world's eval sets are.

    Attributes:
        coco_captions: the COCO captions file.
        coco_ref_images: the reference images.
        coco_truth: image id -> the object of its scene.
        vqa_questions: the VQAv2 question file.
        vqa_annotations: the VQAv2 annotation file.
        vqa_images: the VQA images folder.
    """

    coco_captions: Path
    coco_ref_images: Path
    coco_truth: Path
    vqa_questions: Path
    vqa_annotations: Path
    vqa_images: Path


def world_eval_paths(out: str | Path) -> WorldEvalSets:
    """The paths `write_world_evals(out, ...)` writes (whether or not they exist yet)."""
    out = Path(out)
    return WorldEvalSets(
        coco_captions=out / "coco" / f"captions_{COCO_SUBTYPE}.json",
        coco_ref_images=out / "coco" / "ref_images",
        coco_truth=out / "coco" / "world_truth.json",
        vqa_questions=out / "vqa" / "questions.json",
        vqa_annotations=out / "vqa" / "annotations.json",
        vqa_images=out / "vqa" / "images",
    )


def _image_name(image_id: int) -> str:
    return f"COCO_{COCO_SUBTYPE}_{image_id:012d}.jpg"


def _write_coco(paths: WorldEvalSets, spec: WorldSpec, rng: random.Random, n: int) -> None:
    paths.coco_ref_images.mkdir(parents=True, exist_ok=True)
    images, annotations, truth = [], [], {}
    for image_id in range(1, n + 1):
        scene = sample_scene(rng, spec, num_objects=1)
        render_scene(scene, spec).save(
            paths.coco_ref_images / _image_name(image_id), quality=95, subsampling=0
        )
        images.append({"id": image_id, "file_name": _image_name(image_id)})
        annotations.append({"id": image_id, "image_id": image_id, "caption": caption(scene, rng)})
        truth[str(image_id)] = scene.truth()[0]
    world = {"colors": list(spec.colors), "shapes": list(spec.shapes),
             "positions": list(spec.positions)}
    paths.coco_truth.write_text(
        json.dumps({"world": world, "objects": truth}, indent=0, sort_keys=True) + "\n"
    )
    # the captions last: their presence marks a complete set
    paths.coco_captions.write_text(json.dumps({"images": images, "annotations": annotations}))


@dataclass(frozen=True)
class WorldTruth:
    """A COCO set's truth: what each prompt asked for, and what prompts draw from.

    Attributes:
        values: attribute (`color`, `shape`, `position`) -> the world's values.
        objects: COCO image id -> the prompted object (`color`, `shape`, `position`, `size`).
    """

    values: dict[str, list[str]]
    objects: dict[int, dict[str, str]]


def read_world_truth(path: str | Path) -> WorldTruth:
    """Read a `world_truth.json` written by `write_world_evals`.

    Args:
        path: the file.

    Returns:
        The truth.

    Raises:
        ValueError: an unreadable file, or one without `world` / `objects` (named).
    """
    try:
        data = json.loads(Path(path).read_text())
        world, objects = data["world"], data["objects"]
        values = {"color": world["colors"], "shape": world["shapes"],
                  "position": world["positions"]}
        return WorldTruth(values, {int(k): v for k, v in objects.items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path}: not a world truth file (world.colors/shapes/positions and objects "
            f"by image id): {err!r}"
        ) from err


def _write_vqa(paths: WorldEvalSets, spec: WorldSpec, rng: random.Random, n: int) -> None:
    paths.vqa_images.mkdir(parents=True, exist_ok=True)
    qs, anns = [], []
    for image_id in range(1, n + 1):
        scene = sample_scene(rng, spec)
        render_scene(scene, spec).save(
            paths.vqa_images / _image_name(image_id), quality=95, subsampling=0
        )
        for qa in questions(scene):
            qid = len(qs) + 1
            qs.append({"question_id": qid, "image_id": image_id, "question": qa.question})
            anns.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "answer_type": qa.answer_type,
                    "question_type": qa.question_type,
                    "multiple_choice_answer": qa.answer,
                    "answers": [
                        {"answer": qa.answer, "answer_confidence": "yes", "answer_id": k}
                        for k in range(1, NUM_ANSWERS + 1)
                    ],
                }
            )
    paths.vqa_annotations.write_text(
        json.dumps({"annotations": anns, "data_subtype": COCO_SUBTYPE})
    )
    paths.vqa_questions.write_text(json.dumps({"questions": qs, "data_subtype": COCO_SUBTYPE}))


def write_world_evals(
    out: str | Path, spec: WorldSpec, seed: int, coco_images: int = 64, vqa_images: int = 32
) -> WorldEvalSets:
    """Write the world's COCO-captions and VQAv2 sets (each once: an existing set is kept).

    Args:
        out: the root (e.g. `.cache/tiny/world/evals`).
        spec: the world.
        seed: seed (the same seed writes the same sets).
        coco_images: captioned images (one object each).
        vqa_images: images with questions (every unambiguous question about each).

    Returns:
        The paths.
    """
    paths = world_eval_paths(out)
    if not paths.coco_captions.is_file():
        _write_coco(paths, spec, random.Random(f"{seed}/coco"), coco_images)
    if not paths.vqa_questions.is_file():
        _write_vqa(paths, spec, random.Random(f"{seed}/vqa"), vqa_images)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m dreamray.evals.world_sets --out DIR` writes both sets.

    Args:
        argv: arguments (None: sys.argv).

    Returns:
        Exit code 0.
    """
    parser = asset_parser("dreamray.evals.world_sets")
    parser.add_argument("--image-size", type=int, default=WorldSpec().image_size)
    args = parser.parse_args(argv)
    paths = write_world_evals(args.out, WorldSpec(image_size=args.image_size), args.seed)
    print_listing(vars(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
