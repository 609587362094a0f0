"""What every converter shares: the read context, the items a reader yields, row builders and
the document / caption checks (MMC4 and InstructMMC4 share `build_document`).

A reader is a generator over one input file (or one slice of a JSON list) yielding, per input
row, exactly one row dict (unified schema) or one `Reject`; `DroppedImage` items may come in
between (only with `drop_bad_images`). That one-item-per-row rule is what makes
`rows_in == rows_out + rows_rejected` hold by construction.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dreamray.data.images import MAX_IMAGE_PIXELS, check_image, read_image_file
from dreamray.data.schema import (
    KIND_CONVERSATION,
    KIND_DOCUMENT,
    KIND_PAIR,
    REASON_EMPTY_CAPTION,
    REASON_INDEX_RANGE,
    REASON_MALFORMED,
    REASON_NO_TEXT,
    make_id,
)


@dataclass(frozen=True)
class ReadContext:
    """Everything a reader needs besides its input.

    Attributes:
        source: the source name written into rows and ids.
        images: the image root (None for sources that embed their images).
        max_pixels: largest declared width * height accepted (decompression-bomb guard).
        drop_bad_images: documents only: drop a bad image and keep the document (counted in
            the manifest's `images_dropped`) instead of rejecting the whole document.
        caption_column: img2dataset only: the caption column.
        image_column: img2dataset only: the encoded image column.
        text_field: JourneyDB only: `caption` (Task2 caption) or `prompt` (Midjourney prompt).
    """

    source: str
    images: Path | None = None
    max_pixels: int = MAX_IMAGE_PIXELS
    drop_bad_images: bool = False
    caption_column: str = "txt"
    image_column: str = "jpg"
    text_field: str = "caption"


@dataclass(frozen=True)
class Reject:
    """One input row that is not converted, and why."""

    id: str
    reason: str
    detail: str | None = None


@dataclass(frozen=True)
class DroppedImage:
    """One image dropped from a kept document (only with `drop_bad_images`)."""

    id: str
    reason: str


Item = dict | Reject | DroppedImage
ImageLoader = Callable[[dict], tuple[bytes | None, str | None]]


def pair_row(rid: str, source: str, caption: str, image: bytes, sim: float | None) -> dict:
    """Build a pair row.

    Args:
        rid: row id.
        source: source name.
        caption: the caption, verbatim.
        image: encoded image bytes, verbatim.
        sim: image-text similarity if the source has one.

    Returns:
        A unified-schema row dict.
    """
    return {
        "id": rid,
        "source": source,
        "kind": KIND_PAIR,
        "texts": [caption],
        "roles": [],
        "instruction": None,
        "images": [image],
        "image_after": [0],
        "image_sim": None if sim is None else [float(sim)],
    }


def conversation_row(
    rid: str,
    source: str,
    texts: list[str],
    roles: list[str],
    images: list[bytes],
    image_after: list[int],
) -> dict:
    """Build a conversation row (arguments as in the unified schema).

    Returns:
        A unified-schema row dict.
    """
    return {
        "id": rid,
        "source": source,
        "kind": KIND_CONVERSATION,
        "texts": texts,
        "roles": roles,
        "instruction": None,
        "images": images,
        "image_after": image_after,
        "image_sim": None,
    }


def caption_or_reject(rid: str, caption: object) -> str | Reject:
    """Validate a pair caption.

    Args:
        rid: row id (for the reject).
        caption: the raw caption value.

    Returns:
        The caption unchanged, or a Reject (empty / blank -> empty_caption, non-string ->
        malformed_record).
    """
    if caption is None:
        return Reject(rid, REASON_EMPTY_CAPTION, "caption is null")
    if not isinstance(caption, str):
        return Reject(rid, REASON_MALFORMED, f"caption is {type(caption).__name__}")
    if not caption.strip():
        return Reject(rid, REASON_EMPTY_CAPTION)
    return caption


def parse_json_line(rid: str, line: str) -> dict | Reject:
    """Parse one JSON-lines record that must be an object.

    Args:
        rid: row id (for the reject).
        line: the line.

    Returns:
        The object, or a malformed_record Reject.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return Reject(rid, REASON_MALFORMED, f"invalid JSON: {err}")
    if not isinstance(record, dict):
        return Reject(rid, REASON_MALFORMED, "record is not an object")
    return record


def iter_jsonl(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line index, line) for the non-blank lines of a JSON-lines file.

    Args:
        path: the file.

    Yields:
        The 0-based line index (the record key in ids) and the line.
    """
    with path.open("r", encoding="utf-8") as fh:
        for index, line in enumerate(fh):
            if line.strip():
                yield index, line


def load_json_list(path: Path) -> list:
    """Load a JSON file holding a list of records.

    Args:
        path: the file.

    Returns:
        The list.

    Raises:
        ValueError: when the file is not JSON or not a list (the whole file is unreadable).
    """
    with path.open("r", encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _valid_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _document_shape(rid: str, record: dict) -> Reject | None:
    texts, infos = record.get("text_list"), record.get("image_info")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return Reject(rid, REASON_MALFORMED, "text_list missing or not a list of strings")
    if not isinstance(infos, list) or not all(isinstance(i, dict) for i in infos):
        return Reject(rid, REASON_MALFORMED, "image_info missing or not a list of objects")
    if not any(t.strip() for t in texts):
        return Reject(rid, REASON_NO_TEXT)
    for info in infos:
        if not _valid_index(info.get("matched_text_index")):
            return Reject(rid, REASON_MALFORMED, "matched_text_index missing or not an int")
        if not 0 <= info["matched_text_index"] < len(texts):
            return Reject(rid, REASON_INDEX_RANGE, f"{info['matched_text_index']} of {len(texts)}")
    return None


def build_document(
    rid: str, record: dict, ctx: ReadContext, load: ImageLoader, instruction: str | None = None
) -> Iterator[Item]:
    """Validate an MMC4-style record and yield its document row (or its Reject).

    `record.get` is used on purpose: the keys are input data, and a missing one is a reject.

    Args:
        rid: row id.
        record: `{"text_list": [...], "image_info": [{"image_name", "matched_text_index",
            "matched_sim"}, ...]}`.
        ctx: read context (source, pixel limit, drop policy).
        load: returns (bytes, None) or (None, reason) for one image_info entry.
        instruction: InstructMMC4's instruction, already validated.

    Yields:
        DroppedImage items (drop policy only), then exactly one row dict or Reject.
    """
    bad = _document_shape(rid, record)
    if bad is not None:
        yield bad
        return
    infos = sorted(record["image_info"], key=lambda i: i["matched_text_index"])
    images, after, sims, failures = [], [], [], []
    for info in infos:
        data, reason = load(info)
        reason = reason or check_image(data, ctx.max_pixels)
        if reason is not None:
            failures.append(reason)
            continue
        images.append(data)
        after.append(info["matched_text_index"])
        sims.append(info.get("matched_sim"))
    if failures and (not ctx.drop_bad_images or not images):
        yield Reject(rid, failures[0], f"{len(failures)} of {len(infos)} images failed")
        return
    for reason in failures:
        yield DroppedImage(rid, reason)
    has_sims = all(isinstance(s, int | float) and not isinstance(s, bool) for s in sims)
    yield {
        "id": rid,
        "source": ctx.source,
        "kind": KIND_DOCUMENT,
        "texts": record["text_list"],
        "roles": [],
        "instruction": instruction,
        "images": images,
        "image_after": after,
        "image_sim": [float(s) for s in sims] if has_sims else None,
    }


def image_file_loader(ctx: ReadContext) -> ImageLoader:
    """An ImageLoader reading `image_name` under the context's image root.

    Args:
        ctx: read context with `images` set.

    Returns:
        The loader.

    Raises:
        ValueError: when the context has no image root.
    """
    if ctx.images is None:
        raise ValueError(f"source {ctx.source!r} needs an image directory (--images)")
    root = ctx.images

    def load(info: dict) -> tuple[bytes | None, str | None]:
        name = info.get("image_name")
        if not isinstance(name, str) or not name:
            return None, REASON_MALFORMED
        return read_image_file(root, name)

    return load


RecordConverter = Callable[[str, dict, ReadContext], Iterator[Item]]


def read_records(
    records: list, offset: int, path: Path, ctx: ReadContext, convert: RecordConverter
) -> Iterator[Item]:
    """Convert a slice of a JSON list of records (the unit of work of JSON-list sources).

    Args:
        records: the records of the slice.
        offset: index of the slice's first record in the file (record keys are file indices).
        path: the input file (its stem goes into ids).
        ctx: read context.
        convert: per-record converter yielding one row or Reject (plus DroppedImage items).

    Yields:
        The converter's items; a record that is not an object is a malformed_record Reject.
    """
    for i, record in enumerate(records):
        rid = make_id(ctx.source, path.stem, offset + i)
        if isinstance(record, dict):
            yield from convert(rid, record, ctx)
        else:
            yield Reject(rid, REASON_MALFORMED, "record is not an object")


def read_json_source(path: Path, ctx: ReadContext, convert: RecordConverter) -> Iterator[Item]:
    """Read a JSON list file (`.json`) or a JSON-lines file (`.jsonl`) of records.

    Args:
        path: the input file.
        ctx: read context.
        convert: per-record converter.

    Yields:
        One row or Reject per record (plus DroppedImage items).

    Raises:
        ValueError / json.JSONDecodeError: when a `.json` file is not a JSON list.
    """
    if path.suffix != ".jsonl":
        yield from read_records(load_json_list(path), 0, path, ctx, convert)
        return
    for index, line in iter_jsonl(path):
        rid = make_id(ctx.source, path.stem, index)
        record = parse_json_line(rid, line)
        if isinstance(record, Reject):
            yield record
        else:
            yield from convert(rid, record, ctx)


def iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive tar members into WebDataset samples.

    Args:
        path: the tar file.

    Yields:
        (sample key, {extension: bytes}); the key is the member path up to the first dot of
        its file name, the extension the rest (`abc.jpg` for `doc1.abc.jpg`).

    Raises:
        tarfile.TarError: when the tar is unreadable or truncated (a file-level error).
    """
    key, members = None, {}
    with tarfile.open(path, "r:*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = PurePosixPath(info.name)
            sample_key, _, ext = name.name.partition(".")
            sample_key = str(name.parent / sample_key) if str(name.parent) != "." else sample_key
            if sample_key != key and key is not None:
                yield key, members
                members = {}
            key = sample_key
            members[ext] = tar.extractfile(info).read()
    if key is not None:
        yield key, members
