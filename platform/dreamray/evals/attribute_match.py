"""The attribute_match eval: do a model's images show the colour, shape and position asked for?

The prompts are a shapes-world COCO set (`world_sets`): each caption describes one object whose
attributes `world_truth.json` records. Generation is coco_fid's phase (`coco_run.generate_all`:
fixed manifest, run card, resumable results store, the same `images/seed<s>/<item>.png`
layout), so a re-run resumes and an out_dir of another model or sampler is refused. The reader
(`attributes.read_image`) then reads every image; an image it cannot read counts as wrong and
is listed by reason. Layout of `out_dir` beyond coco_fid's generation files:

- `readings.jsonl`: per image, the prompt, its truth, what was read and which attributes match;
- `scores.json`: the accuracies over all images and per seed, chance levels, the card;
- `grid.png`: prompts beside their images.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dreamray.evals.attributes import READ_ATTRIBUTES, Reading, read_image, score_attributes
from dreamray.evals.coco_gen import artifact_hash, sampler_card, seed_dir
from dreamray.evals.coco_run import CocoFidRun, generate_all
from dreamray.evals.grid import write_grid
from dreamray.evals.results import GRID_FILE
from dreamray.evals.world_sets import WorldTruth, read_world_truth
from dreamray.files import atomic_write_json, sha256_file

PROTOCOL_NAME = "dreamray_world_attribute_match"
READINGS_FILE = "readings.jsonl"


def prompt_truths(truth: WorldTruth, truth_path: str, items: list[dict], image_ids: dict) -> list:
    """The prompted object of every item, in item order.

    Args:
        truth: the set's truth.
        truth_path: its file (for the error message).
        items: the generation items (`item_id` keys).
        image_ids: item id -> COCO image id.

    Returns:
        One truth dict per item.

    Raises:
        ValueError: an item whose image id the truth file does not know (named).
    """
    missing = sorted({image_ids[i["item_id"]] for i in items} - set(truth.objects))
    if missing:
        raise ValueError(
            f"{truth_path}: no truth for COCO image ids {missing[:5]} ({len(missing)} in all); "
            "the captions and the truth file are not from the same world set"
        )
    return [truth.objects[image_ids[i["item_id"]]] for i in items]


def reading_record(item: dict, truth: dict, reading: Reading) -> dict[str, Any]:
    """One line of `readings.jsonl`: prompt, truth, what was read, which attributes match."""
    record: dict[str, Any] = {
        "id": item["id"], "seed": item["seed"], "caption": item["caption"], "truth": truth,
        "reason": reading.reason,
    }
    if reading.reason is None:
        read = asdict(reading.objects[0])
        record["read"] = {a: read[a] for a in READ_ATTRIBUTES}
        record["objects"] = len(reading.objects)
        record["match"] = {a: read[a] == truth[a] for a in READ_ATTRIBUTES}
    return record


def _write_readings(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    tmp.replace(path)


def match_attributes(run: CocoFidRun, truth_path: str, out_dir: str | Path) -> dict[str, Any]:
    """Generate (or resume) an image per prompt and seed, read each, score against the truth.

    Args:
        run: the generation settings (its FID settings are not used: nothing is FID-scored).
        truth_path: the set's `world_truth.json`.
        out_dir: the output directory (reused across restarts).

    Returns:
        `status`, the metrics of `AttributeScores.metrics()` over all images, `per_seed`, the
        `card`; or `{"status": "incomplete", ...}` when `max_items` stopped generation early.

    Raises:
        ValueError: an unreadable truth file, or prompts it has no truth for; plus what
            `generate_all` raises (bad captions, an out_dir of another run).
    """
    truth = read_world_truth(truth_path)  # a bad file fails before any image is made
    gen = generate_all(run, out_dir)
    if gen.missing:
        return gen.incomplete()
    out = Path(out_dir)
    image_ids = {item.item_id: item.image_id for item in gen.manifest.items}
    truths = prompt_truths(truth, truth_path, gen.items, image_ids)
    readings = [read_image(Path(item["path"]).read_bytes()) for item in gen.items]
    _write_readings(out / READINGS_FILE, [
        reading_record(i, t, r) for i, t, r in zip(gen.items, truths, readings, strict=True)
    ])
    per_seed = {}
    for seed in run.seeds:
        keep = [k for k, item in enumerate(gen.items) if item["seed"] == seed]
        scores = score_attributes([readings[k] for k in keep], [truths[k] for k in keep],
                                  truth.values)
        per_seed[str(seed)] = scores.metrics()
    result = {
        "status": "complete",
        **score_attributes(readings, truths, truth.values).metrics(),
        "per_seed": per_seed,
        "generated": gen.made,
        "card": {
            "protocol_name": PROTOCOL_NAME,
            "N": run.num_samples,
            "seeds": list(run.seeds),
            **sampler_card(run.sampler),
            "manifest": {"sha256": gen.manifest_sha, "seed": run.manifest_seed,
                         "captions": run.captions},
            "truth": {"path": str(truth_path), "sha256": sha256_file(truth_path)},
            "model": {"dir": str(run.model_dir), **artifact_hash(run.model_dir)},
        },
    }
    atomic_write_json(out / "scores.json", result)
    write_grid(out / GRID_FILE, gen.manifest, {f"seed{s}": seed_dir(out, s) for s in run.seeds})
    return result
