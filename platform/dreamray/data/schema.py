"""The unified shard schema: one row per sample, whatever the source format.

This module is the one place the schema, the kinds, the roles, the source names and the
reject reasons are spelled. Converters write it; the sequence builder reads it.

Column semantics (every list column is non-null; `image_sim` and `instruction` may be null):
- `id`: stable across runs over the same input, `<source>/<input file stem>/<key in file>`.
- `texts`: caption (pair: exactly one), sentences (document) or turns (conversation), verbatim.
- `roles`: one per text for conversations (`user` / `assistant`); empty for other kinds.
- `images`: encoded bytes exactly as found in the source (never re-encoded).
- `image_after[i]`: index into `texts` of the text image i belongs to: the matched sentence
  (document; rows are written with images sorted by it), the turn holding the i-th
  placeholder (conversation), 0 (pair: the builder picks i2t / t2i order by mode).
- `image_sim[i]`: the source's image-text similarity when it has one (MMC4 `matched_sim`).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

KIND_PAIR = "pair"
KIND_DOCUMENT = "document"
KIND_CONVERSATION = "conversation"
KINDS = (KIND_PAIR, KIND_DOCUMENT, KIND_CONVERSATION)

ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"
ROLES = (ROLE_USER, ROLE_ASSISTANT)

# Placeholders that mark an image slot inside conversation text.
IMAGE_PLACEHOLDER = "<image>"
DREAM_PLACEHOLDER = "<dream>"
PLACEHOLDERS = (IMAGE_PLACEHOLDER, DREAM_PLACEHOLDER)

# Source names used in rows, shard directories and metrics tags.
SOURCES = (
    "laion400m",
    "blip_laion",
    "laion_coco",
    "mmc4_core",
    "journeydb",
    "llava_pretrain",
    "llava_instruct",
    "instruct_mmc4",
)

UNIFIED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("texts", pa.list_(pa.string()), nullable=False),
        pa.field("roles", pa.list_(pa.string()), nullable=False),
        pa.field("instruction", pa.string(), nullable=True),
        pa.field("images", pa.list_(pa.binary()), nullable=False),
        pa.field("image_after", pa.list_(pa.int32()), nullable=False),
        pa.field("image_sim", pa.list_(pa.float32()), nullable=True),
    ],
    metadata={"dreamray.schema_version": str(SCHEMA_VERSION)},
)
COLUMNS = tuple(UNIFIED_SCHEMA.names)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
    ]
)

# Reject reasons: the keys of a manifest's `rows_rejected`.
REASON_MALFORMED = "malformed_record"  # unparsable line, missing key or wrong type
REASON_MISSING_COLUMN = "missing_column"  # a parquet file lacks a required column
REASON_STATUS = "status_not_success"  # img2dataset row that failed to download / resize
REASON_EMPTY_CAPTION = "empty_caption"
REASON_NO_TEXT = "no_text"  # document or conversation without any non-blank text
REASON_EMPTY_INSTRUCTION = "empty_instruction"
REASON_INDEX_RANGE = "text_index_out_of_range"  # matched_text_index outside text_list
REASON_PLACEHOLDER = "placeholder_mismatch"  # <image>/<dream> count != image count
REASON_BAD_ROLE = "bad_role"
REASON_IMAGE_MISSING = "image_missing"  # file not found, or null bytes
REASON_IMAGE_PATH = "image_path_outside_root"
REASON_IMAGE_EMPTY = "image_empty"  # zero bytes
REASON_IMAGE_UNDECODABLE = "image_undecodable"
REASON_IMAGE_TRUNCATED = "image_truncated"
REASON_IMAGE_BOMB = "image_decompression_bomb"

REASONS = (
    REASON_MALFORMED,
    REASON_MISSING_COLUMN,
    REASON_STATUS,
    REASON_EMPTY_CAPTION,
    REASON_NO_TEXT,
    REASON_EMPTY_INSTRUCTION,
    REASON_INDEX_RANGE,
    REASON_PLACEHOLDER,
    REASON_BAD_ROLE,
    REASON_IMAGE_MISSING,
    REASON_IMAGE_PATH,
    REASON_IMAGE_EMPTY,
    REASON_IMAGE_UNDECODABLE,
    REASON_IMAGE_TRUNCATED,
    REASON_IMAGE_BOMB,
)


def make_id(source: str, file_stem: str, key: str | int) -> str:
    """Build the stable row id `<source>/<file stem>/<key>`.

    Args:
        source: source name (one of SOURCES, or a custom one).
        file_stem: the input file's name without its extension.
        key: the row's key inside the file (img2dataset `key`, or the record index).

    Returns:
        The id string.
    """
    return f"{source}/{file_stem}/{key}"


def empty_table() -> pa.Table:
    """An empty table in the unified schema.

    Returns:
        A zero-row table with UNIFIED_SCHEMA.
    """
    return UNIFIED_SCHEMA.empty_table()


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Turn row dicts (keys = COLUMNS) into a table in the unified schema.

    Args:
        rows: dicts with exactly the schema's columns.

    Returns:
        The table, typed by UNIFIED_SCHEMA.

    Raises:
        pyarrow.ArrowInvalid / ArrowTypeError: when a value does not fit its column.
    """
    return pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA)


def check_row(row: dict) -> None:
    """Check the invariants of one unified row (used by converters' tests and the writer).

    Args:
        row: a row dict.

    Raises:
        ValueError: naming the broken invariant.
    """
    if set(row) != set(COLUMNS):
        raise ValueError(f"row columns {sorted(row)} != schema {sorted(COLUMNS)}")
    if row["kind"] not in KINDS:
        raise ValueError(f"unknown kind {row['kind']!r}")
    if len(row["image_after"]) != len(row["images"]):
        raise ValueError("image_after must have one entry per image")
    if row["image_sim"] is not None and len(row["image_sim"]) != len(row["images"]):
        raise ValueError("image_sim must be null or have one entry per image")
    if any(not 0 <= i < len(row["texts"]) for i in row["image_after"]):
        raise ValueError("image_after entries must index texts")
    if row["kind"] == KIND_CONVERSATION and len(row["roles"]) != len(row["texts"]):
        raise ValueError("a conversation has one role per text")
    if row["kind"] != KIND_CONVERSATION and row["roles"]:
        raise ValueError("only conversations have roles")
    if row["kind"] == KIND_PAIR and (len(row["texts"]) != 1 or len(row["images"]) != 1):
        raise ValueError("a pair has exactly one text and one image")
