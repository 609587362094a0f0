"""The reader of a JSON-list source whose records name image files (LLaVA, InstructMMC4)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dreamray.data.convert.base import (
    Item,
    ReadContext,
    RecordConverter,
    read_json_source,
    read_records,
)


@dataclass(frozen=True)
class JsonListReader:
    """The reader of a JSON-list source whose records name image files (LLaVA, InstructMMC4),
    made from its per-record converter.

    Attributes:
        name: the converter's command-line name (in errors).
        convert: the per-record converter.
    """

    name: str
    convert: RecordConverter

    def read_file(self, path: Path, ctx: ReadContext) -> Iterator[Item]:
        """Read a `.json` list (or `.jsonl`) file: one row or Reject per record.

        Raises:
            ValueError: without an image directory, or when the file is not a JSON list.
        """
        if ctx.images is None:
            raise ValueError(f"{self.name} needs an image directory (--images)")
        yield from read_json_source(path, ctx, self.convert)

    def read_records(self, records: list, offset: int, path: Path,
                     ctx: ReadContext) -> Iterator[Item]:
        """Convert a slice of the file's JSON list (see `read_records`)."""
        yield from read_records(records, offset, path, ctx, self.convert)
