"""InstructMMC4 -> unified document rows with an instruction.

A record: `{"instruction": str, "text_list": [...], "image_info": [{"image_name": path relative
to the image root (mmc4-core-raw/ in the release), "matched_text_index", "matched_sim"}]}`.
The document part is validated exactly like MMC4 (`base.build_document`).
"""

from __future__ import annotations

from collections.abc import Iterator

from dreamray.data.convert.base import (
    Item,
    ReadContext,
    Reject,
    build_document,
    image_file_loader,
)
from dreamray.data.convert.json_list import JsonListReader
from dreamray.data.schema import REASON_EMPTY_INSTRUCTION, REASON_MALFORMED


def convert_record(rid: str, record: dict, ctx: ReadContext) -> Iterator[Item]:
    """Convert one InstructMMC4 record.

    Args:
        rid: row id.
        record: the record.
        ctx: read context (`images` = image root).

    Yields:
        Exactly one document row or Reject (DroppedImage items in drop mode).
    """
    instruction = record.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        yield Reject(rid, REASON_MALFORMED, "instruction is not a string")
    elif instruction is None or not instruction.strip():
        yield Reject(rid, REASON_EMPTY_INSTRUCTION)
    else:
        yield from build_document(rid, record, ctx, image_file_loader(ctx), instruction)


READER = JsonListReader("instruct_mmc4", convert_record)
