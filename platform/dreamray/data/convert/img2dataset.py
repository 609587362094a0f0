"""img2dataset parquet shards (LAION-400M, BLIP-LAION, LAION-COCO) -> unified pair rows.

img2dataset's parquet output has one row per URL: `key`, the encoded image (`jpg`), the caption
(`txt`), `status` (`success`, `failed_to_download`, `failed_to_resize`, ...), `error_message`,
`width`, `height`, `original_width`, `original_height`, plus any saved metadata columns
(LAION-400M's `similarity` becomes `image_sim`). Only `status == "success"` rows are kept.

Its webdataset output (`NNNNN.tar`, the layout the DreamLLM reference trains on) holds one
sample per successful download: `<key>.jpg` (or png / jpeg / webp), `<key>.txt` and `<key>.json`
(metadata, with `status` and `similarity` when saved); the `NNNNN.parquet` next to a tar is
metadata only, so a directory holding tars is read through its tars.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from dreamray.data.convert.base import (
    Item,
    ReadContext,
    Reject,
    caption_or_reject,
    iter_tar_samples,
    pair_row,
)
from dreamray.data.images import check_image
from dreamray.data.schema import (
    REASON_IMAGE_MISSING,
    REASON_MALFORMED,
    REASON_MISSING_COLUMN,
    REASON_STATUS,
    make_id,
)

STATUS_SUCCESS = "success"
SIMILARITY_COLUMN = "similarity"
BATCH_ROWS = 64  # decoded images of one batch live in memory together


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def list_inputs(paths: list[Path]) -> list[Path]:
    """Expand directories into their `*.tar` files if any, else their `*.parquet` files.

    Args:
        paths: files and/or img2dataset output directories.

    Returns:
        The input files (sorted within a directory; files given explicitly kept as given).
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.tar")) or sorted(path.glob("*.parquet")))
        else:
            files.append(path)
    return files


def _row_key(path: Path, index: int, key: object) -> str:
    return str(key) if isinstance(key, str) and key else f"{path.stem}-{index}"


def _reject_all(path: Path, pf: pq.ParquetFile, ctx: ReadContext, missing: list[str]):
    """A readable file without a required column: every row is rejected, by key if possible."""
    detail = f"missing columns {missing}"
    has_key = "key" in pf.schema_arrow.names
    index = 0
    for batch in pf.iter_batches(batch_size=1024, columns=["key"] if has_key else []):
        keys = batch.column(0).to_pylist() if has_key else [None] * batch.num_rows
        for key in keys:
            yield Reject(
                make_id(ctx.source, path.stem, _row_key(path, index, key)),
                REASON_MISSING_COLUMN,
                detail,
            )
            index += 1


def _convert_row(rid: str, row: dict, ctx: ReadContext) -> Item:
    if row["status"] != STATUS_SUCCESS:
        return Reject(rid, REASON_STATUS, f"status={row['status']!r}")
    caption = caption_or_reject(rid, row[ctx.caption_column])
    if isinstance(caption, Reject):
        return caption
    image = row[ctx.image_column]
    reason = check_image(image, ctx.max_pixels)
    if reason is not None:
        return Reject(rid, reason)
    return pair_row(rid, ctx.source, caption, image, row.get(SIMILARITY_COLUMN))


def read_file(path: Path, ctx: ReadContext) -> Iterator[Item]:
    """Read one img2dataset shard (`.parquet`, or a webdataset `.tar`).

    Args:
        path: the parquet file.
        ctx: read context (caption / image columns, pixel limit).

    Yields:
        One pair row or Reject per parquet row.

    Raises:
        pyarrow.ArrowInvalid / OSError: when the file is not readable parquet (truncated...).
    """
    if path.suffix == ".tar":
        yield from read_tar(path, ctx)
        return
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    required = [ctx.image_column, ctx.caption_column, "status"]
    missing = [c for c in required if c not in names]
    if missing:
        yield from _reject_all(path, pf, ctx, missing)
        return
    optional = [c for c in ("key", SIMILARITY_COLUMN) if c in names]
    index = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=required + optional):
        for row in batch.to_pylist():
            rid = make_id(ctx.source, path.stem, _row_key(path, index, row.get("key")))
            index += 1
            yield _convert_row(rid, row, ctx)


def _tar_row(rid: str, members: dict[str, bytes], ctx: ReadContext) -> Item:
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
        caption = members["txt"].decode("utf-8") if "txt" in members else None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return Reject(rid, REASON_MALFORMED, str(err))
    if not isinstance(meta, dict):
        return Reject(rid, REASON_MALFORMED, "json member is not an object")
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        return Reject(rid, REASON_IMAGE_MISSING, "no image member")
    # Samples in a tar are successes unless their metadata says otherwise.
    row = {
        "status": meta.get("status", STATUS_SUCCESS),
        ctx.caption_column: caption,
        ctx.image_column: image,
        SIMILARITY_COLUMN: meta.get(SIMILARITY_COLUMN),
    }
    return _convert_row(rid, row, ctx)


def read_tar(path: Path, ctx: ReadContext) -> Iterator[Item]:
    """Read one img2dataset webdataset tar (the caption is the `txt` member).

    Args:
        path: the `.tar` file.
        ctx: read context (pixel limit; `caption_column` / `image_column` unused).

    Yields:
        One pair row or Reject per sample.

    Raises:
        tarfile.TarError: when the tar is unreadable or truncated.
    """
    for key, members in iter_tar_samples(path):
        yield _tar_row(make_id(ctx.source, path.stem, key), members, ctx)
