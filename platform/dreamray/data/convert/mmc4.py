"""MMC4 documents -> unified document rows.

Inputs:
- JSON lines, one document per line (`text_list`, `image_info[{image_name, matched_text_index,
  matched_sim}]`, `similarity_matrix`, `url`), images as files named by `image_name` under the
  image directory; the row key is the line index.
- tars in WebDataset layout, one sample per document: `<key>.json` holds the document; each
  image is either inline as base64 in `image_info[i]["image_base64"]` (OpenFlamingo's layout)
  or a member `<key>.<image stem>.jpg` (the DreamLLM reference's layout). The row key is the
  sample key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from dreamray.data.convert.base import (
    Item,
    ReadContext,
    Reject,
    build_document,
    image_file_loader,
    iter_jsonl,
    iter_tar_samples,
    parse_json_line,
)
from dreamray.data.schema import (
    REASON_IMAGE_MISSING,
    REASON_IMAGE_UNDECODABLE,
    REASON_MALFORMED,
    make_id,
)


def read_file(path: Path, ctx: ReadContext) -> Iterator[Item]:
    """Read one MMC4 input file (`.jsonl` with an image dir, or `.tar`).

    Args:
        path: the input file.
        ctx: read context; `images` is required for `.jsonl` inputs.

    Yields:
        One row dict or Reject per document (DroppedImage items in drop mode).
    """
    if path.suffix == ".tar":
        yield from read_tar(path, ctx)
    else:
        yield from read_jsonl(path, ctx)


def read_jsonl(path: Path, ctx: ReadContext) -> Iterator[Item]:
    """Read MMC4 JSON lines whose images are files under `ctx.images`.

    Args:
        path: the `.jsonl` file.
        ctx: read context.

    Yields:
        As `read_file`.
    """
    load = image_file_loader(ctx)
    for index, line in iter_jsonl(path):
        rid = make_id(ctx.source, path.stem, index)
        record = parse_json_line(rid, line)
        if isinstance(record, Reject):
            yield record
        else:
            yield from build_document(rid, record, ctx, load)


def _tar_loader(members: dict[str, bytes]):
    def load(info: dict) -> tuple[bytes | None, str | None]:
        inline = info.get("image_base64")
        if isinstance(inline, str):
            try:
                return base64.b64decode(inline, validate=True), None
            except (binascii.Error, ValueError):
                return None, REASON_IMAGE_UNDECODABLE
        name = info.get("image_name")
        if not isinstance(name, str) or not name:
            return None, REASON_MALFORMED
        # The reference loader rewrites every image_name to "<stem>.jpg" before the lookup.
        data = members.get(f"{PurePosixPath(name).stem}.jpg", members.get(name))
        return (data, None) if data is not None else (None, REASON_IMAGE_MISSING)

    return load


def read_tar(path: Path, ctx: ReadContext) -> Iterator[Item]:
    """Read a WebDataset tar of MMC4 documents (inline base64 or member images).

    A sample without a `json` member is not a document: it is rejected as malformed.

    Args:
        path: the `.tar` file.
        ctx: read context (`images` unused).

    Yields:
        As `read_file`.
    """
    for key, members in iter_tar_samples(path):
        rid = make_id(ctx.source, path.stem, key)
        if "json" not in members:
            yield Reject(rid, REASON_MALFORMED, "sample has no json member")
            continue
        record = parse_json_line(rid, members["json"].decode("utf-8", errors="replace"))
        if isinstance(record, Reject):
            yield record
        else:
            yield from build_document(rid, record, ctx, _tar_loader(members))
