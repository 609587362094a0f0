"""Synthetic pair sources: img2dataset parquet shards (LAION family) and JourneyDB."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dreamray.data.schema import (
    KIND_PAIR,
    REASON_EMPTY_CAPTION,
    REASON_IMAGE_BOMB,
    REASON_IMAGE_EMPTY,
    REASON_IMAGE_MISSING,
    REASON_IMAGE_PATH,
    REASON_IMAGE_TRUNCATED,
    REASON_IMAGE_UNDECODABLE,
    REASON_MALFORMED,
    REASON_MISSING_COLUMN,
    REASON_STATUS,
    make_id,
)
from dreamray.data.synthetic.common import Rng, SourceLayout, Truth, write_bytes
from dreamray.data.synthetic.images import bad_image

IMG2DATASET_SOURCES = ("laion400m", "blip_laion", "laion_coco")
IMAGE_FAULTS = (REASON_IMAGE_UNDECODABLE, REASON_IMAGE_TRUNCATED, REASON_IMAGE_BOMB)
FAILED_EVERY = 5  # img2dataset output always has failed downloads: one row in five here


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def img2dataset_row(
    key: str,
    caption: str | None,
    image: bytes | None,
    status: str,
    sim: float,
    measure: bool = True,
):
    width, height = _size(image) if measure and status == "success" else (None, None)
    return {
        "key": key,
        "jpg": image,
        "txt": caption,
        "url": f"http://example.com/{key}.jpg",
        "width": width,
        "height": height,
        "original_width": width,
        "original_height": height,
        "status": status,
        "error_message": None if status == "success" else "HTTP 404",
        "similarity": sim,
    }


def _i2d_shard(rng: Rng, source: str, shard: int, rows: int, truth: Truth) -> list[dict]:
    out = []
    for i in range(rows):
        key = f"{shard:05d}{i:04d}"
        rid = make_id(source, f"{shard:05d}", key)
        caption, sim = rng.sentence(), round(rng.py.uniform(0.25, 0.4), 4)
        if i % FAILED_EVERY == FAILED_EVERY - 1:
            out.append(img2dataset_row(key, caption, None, "failed_to_download", sim))
            truth.rejects[rid] = REASON_STATUS
            continue
        image = rng.image(shard * rows + i)
        out.append(img2dataset_row(key, caption, image, "success", sim))
        truth.expect(rid, KIND_PAIR, [caption], [image], [0])
    return out


def _i2d_faults(rng: Rng, source: str, shard: int, start: int, truth: Truth) -> list[dict]:
    planted = [(reason, rng.sentence(), bad_image(rng.np, reason)) for reason in IMAGE_FAULTS]
    planted += [
        (REASON_IMAGE_EMPTY, rng.sentence(), b""),
        (REASON_EMPTY_CAPTION, "   ", rng.image(0)),
        (REASON_EMPTY_CAPTION, None, rng.image(1)),
        (REASON_IMAGE_MISSING, rng.sentence(), None),
    ]
    rows = []
    for offset, (reason, caption, image) in enumerate(planted):
        key = f"{shard:05d}{start + offset:04d}"
        rows.append(img2dataset_row(key, caption, image, "success", 0.3, measure=False))
        truth.rejects[make_id(source, f"{shard:05d}", key)] = reason
    return rows


def write_parquet(rows: list[dict], path: Path, drop: tuple[str, ...] = ()) -> None:
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.drop_columns(list(drop)), path, row_group_size=8)


def write_img2dataset(
    out: Path, source: str, seed: int, faults: bool, shards: int = 2, rows_per_shard: int = 10
) -> tuple[SourceLayout, Truth]:
    """Write img2dataset-style parquet shards (`NNNNN.parquet` + `NNNNN_stats.json`).

    With faults, shard 1 gets bad rows appended, shard 2 is a truncated parquet file and shard 3
    lacks the `txt` column.

    Args:
        out: the synthetic root; the source goes to `out/<source>/`.
        source: one of IMG2DATASET_SOURCES.
        seed: seed.
        faults: plant bad rows and files.
        shards: good shards.
        rows_per_shard: rows per good shard (every FAILED_EVERY-th failed to download).

    Returns:
        The layout and the truth.
    """
    rng, truth, root = Rng(seed, source), Truth(source), out / source
    root.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        rows = _i2d_shard(rng, source, shard, rows_per_shard, truth)
        if faults and shard == 1:
            rows += _i2d_faults(rng, source, shard, rows_per_shard, truth)
        write_parquet(rows, root / f"{shard:05d}.parquet")
        stats = {"count": len(rows), "successes": sum(r["status"] == "success" for r in rows)}
        (root / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    if faults:
        _write_file_faults(rng, source, root, shards, truth)
    return SourceLayout(source, "img2dataset", [root], None), truth


def _write_file_faults(rng: Rng, source: str, root: Path, first: int, truth: Truth) -> None:
    scratch = Truth(source)  # rows of the broken files are not expected as good rows
    truncated = root / f"{first:05d}.parquet"
    write_parquet(_i2d_shard(rng, source, first, 6, scratch), truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    truth.bad_files[truncated.name] = "unreadable"
    shard = first + 1
    rows = _i2d_shard(rng, source, shard, 3, scratch)
    write_parquet(rows, root / f"{shard:05d}.parquet", drop=("txt",))
    for row in rows:
        truth.rejects[make_id(source, f"{shard:05d}", row["key"])] = REASON_MISSING_COLUMN


JDB_ANNOTATION = "train_anno_realease_repath.jsonl"


def journeydb_record(img_path: str, caption: str | None, prompt: str) -> dict:
    """One line of JourneyDB's annotation file (Task2 is null when there is no caption).

    Args:
        img_path: the image path as JourneyDB writes it (`./NNN/<name>.jpg`).
        caption: the Task2 caption (what the converter keeps).
        prompt: the Midjourney prompt.

    Returns:
        The record.
    """
    task2 = {
        "Caption": caption,
        "Question": ["What is shown?"],
        "Options": [["A", "B"]],
        "Answer": ["A"],
    }
    return {
        "img_path": img_path,
        "url": f"https://cdn.example.com/{img_path[2:]}",
        "prompt": prompt,
        "Task1": {"Style": ["photo"], "Content": ["scene"], "Atmosphere": "calm"},
        "Task2": task2 if caption is not None else None,
    }


def _jdb_record(rng: Rng, img_path: str, caption: str | None) -> dict:
    return journeydb_record(img_path, caption, rng.sentence() + " --ar 3:2 --v 5")


def write_journeydb(
    out: Path, seed: int, faults: bool, rows: int = 16
) -> tuple[SourceLayout, Truth]:
    """Write `journeydb/data/train/train_anno_realease_repath.jsonl` and `imgs/NNN/*.jpg`.

    Args:
        out: the synthetic root.
        seed: seed.
        faults: plant bad lines.
        rows: good annotation lines.

    Returns:
        The layout and the truth.
    """
    source = "journeydb"
    rng, truth = Rng(seed, source), Truth(source)
    root = out / source / "data" / "train"
    images, lines = root / "imgs", []
    for i in range(rows):
        img_path, image, caption = f"./{i // 8:03d}/{rng.hex_name()}", rng.image(i), rng.sentence()
        write_bytes(images / img_path, image)
        lines.append(json.dumps(_jdb_record(rng, img_path, caption)))
        truth.expect(
            make_id(source, Path(JDB_ANNOTATION).stem, i), KIND_PAIR, [caption], [image], [0]
        )
    if faults:
        lines += _jdb_faults(rng, images, truth, len(lines))
    (root / JDB_ANNOTATION).write_text("\n".join(lines) + "\n")
    return SourceLayout(source, "journeydb", [root / JDB_ANNOTATION], images), truth


def _jdb_faults(rng: Rng, images: Path, truth: Truth, start: int) -> list[str]:
    lines = []
    for reason in IMAGE_FAULTS:
        img_path = f"./999/{rng.hex_name()}"
        write_bytes(images / img_path, bad_image(rng.np, reason))
        lines.append((reason, json.dumps(_jdb_record(rng, img_path, rng.sentence()))))
    lines += [
        (REASON_EMPTY_CAPTION, json.dumps(_jdb_record(rng, "./000/x.jpg", ""))),
        (REASON_EMPTY_CAPTION, json.dumps(_jdb_record(rng, "./000/x.jpg", None))),
        (REASON_IMAGE_MISSING, json.dumps(_jdb_record(rng, "./998/absent.jpg", rng.sentence()))),
        (REASON_IMAGE_PATH, json.dumps(_jdb_record(rng, "./../../../etc/hosts", rng.sentence()))),
        (REASON_MALFORMED, '{"img_path": "./000/x.jpg", "prompt": '),
    ]
    stem = Path(JDB_ANNOTATION).stem
    for offset, (reason, _) in enumerate(lines):
        truth.rejects[make_id("journeydb", stem, start + offset)] = reason
    return [line for _, line in lines]
