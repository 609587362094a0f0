"""JourneyDB annotations -> unified pair rows.

`train_anno_realease_repath.jsonl` (the release's spelling) has one object per image:
`img_path` (relative to the unpacked image root, e.g. "./000/<hash>.jpg"), `prompt` (the
Midjourney prompt), `Task1` (style / content tags) and `Task2` with `Caption` (a cleaned
caption) and VQA fields. The pair's text is the Task2 caption by default (`text_field`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dreamray.data.convert.base import (
    Item,
    ReadContext,
    Reject,
    caption_or_reject,
    iter_jsonl,
    pair_row,
    parse_json_line,
)
from dreamray.data.images import check_image, read_image_file
from dreamray.data.schema import REASON_MALFORMED, make_id

TEXT_FIELDS = ("caption", "prompt")


def _text(record: dict, text_field: str) -> object:
    if text_field == "prompt":
        return record.get("prompt")
    task2 = record.get("Task2")
    return task2.get("Caption") if isinstance(task2, dict) else None


def _convert(rid: str, record: dict, ctx: ReadContext) -> Item:
    img_path = record.get("img_path")
    if not isinstance(img_path, str) or not img_path:
        return Reject(rid, REASON_MALFORMED, "img_path missing")
    caption = caption_or_reject(rid, _text(record, ctx.text_field))
    if isinstance(caption, Reject):
        return caption
    data, reason = read_image_file(ctx.images, img_path)
    reason = reason or check_image(data, ctx.max_pixels)
    if reason is not None:
        return Reject(rid, reason, img_path)
    return pair_row(rid, ctx.source, caption, data, None)


def read_file(path: Path, ctx: ReadContext) -> Iterator[Item]:
    """Read one JourneyDB annotation file.

    Args:
        path: the `.jsonl` annotation file.
        ctx: read context (`images` = image root, `text_field` = caption | prompt).

    Yields:
        One pair row or Reject per annotation line.

    Raises:
        ValueError: when `ctx.images` is missing or `ctx.text_field` is unknown.
    """
    if ctx.images is None:
        raise ValueError("journeydb needs an image directory (--images)")
    if ctx.text_field not in TEXT_FIELDS:
        raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {ctx.text_field!r}")
    for index, line in iter_jsonl(path):
        rid = make_id(ctx.source, path.stem, index)
        record = parse_json_line(rid, line)
        yield record if isinstance(record, Reject) else _convert(rid, record, ctx)
