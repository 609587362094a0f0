"""One unit of conversion work, in process: read items, write shards, count, roll back on error.

`convert_unit` is what a Ray task runs (see `runner.py`); it is plain Python so that tests can
call it directly without Ray.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from dreamray.data.convert.base import DroppedImage, ReadContext, Reject
from dreamray.data.convert.registry import get_converter
from dreamray.data.schema import UNIFIED_SCHEMA, check_row, rows_to_table

REPORT_EVERY_ROWS = 64  # progress / metrics granularity


@dataclass(frozen=True)
class ShardOptions:
    """How output shards are cut.

    Attributes:
        row_group_rows: rows per parquet row group at most (images are large: keep it small so
            that a reader holds little in memory).
        row_group_bytes: encoded image bytes per row group at most.
        shard_rows: rows per shard file at most.
    """

    row_group_rows: int = 64
    row_group_bytes: int = 32 << 20
    shard_rows: int = 8192


@dataclass(frozen=True)
class WorkUnit:
    """One task's input: a whole file, or a slice of a JSON list file.

    Attributes:
        path: the input file.
        file_index: its position among the run's inputs (shard names sort by it).
        part: index of this slice within the file (0 for whole files).
        records: the slice's records (None: read the whole file).
        offset: index in the file of the slice's first record.
    """

    path: str
    file_index: int
    part: int = 0
    records: list | None = None
    offset: int = 0


@dataclass
class UnitResult:
    """What one unit produced (all counts are rows, except `images_dropped`)."""

    path: str
    part: int
    rows_in: int = 0
    rows_out: int = 0
    rejected: Counter = field(default_factory=Counter)
    images_dropped: Counter = field(default_factory=Counter)
    rejects: list[dict] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


class ShardWriter:
    """Writes unified rows into `<prefix>-NNNN.parquet` files with small row groups."""

    def __init__(self, out_dir: Path, prefix: str, options: ShardOptions):
        self.out_dir, self.prefix, self.options = out_dir, prefix, options
        self.shards: list[dict] = []
        self._buffer: list[dict] = []
        self._buffer_bytes = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, row: dict) -> None:
        """Buffer one row; flush a row group when the buffer is full."""
        check_row(row)
        self._buffer.append(row)
        self._buffer_bytes += sum(len(b) for b in row["images"])
        full_rows = len(self._buffer) >= self.options.row_group_rows
        if full_rows or self._buffer_bytes >= self.options.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            name = f"{self.prefix}-{len(self.shards):04d}.parquet"
            self.shards.append({"path": name, "rows": 0, "bytes": 0})
            self._writer = pq.ParquetWriter(self.out_dir / name, UNIFIED_SCHEMA)
        table = rows_to_table(self._buffer)
        self._writer.write_table(table, row_group_size=len(self._buffer))
        self.shards[-1]["rows"] += len(self._buffer)
        self._buffer, self._buffer_bytes = [], 0
        if self.shards[-1]["rows"] >= self.options.shard_rows:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            shard = self.shards[-1]
            shard["bytes"] = (self.out_dir / shard["path"]).stat().st_size

    def close(self) -> list[dict]:
        """Flush and close; return the shards written (`path` relative to out_dir, rows, bytes)."""
        self._flush()
        self._close_file()
        return self.shards

    def abort(self) -> None:
        """Close and delete every shard written so far (the unit failed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for shard in self.shards:
            (self.out_dir / shard["path"]).unlink(missing_ok=True)
        self.shards = []


Reporter = Callable[[int, int, dict], None]


def _items(unit: WorkUnit, converter_name: str, ctx: ReadContext):
    converter = get_converter(converter_name)
    path = Path(unit.path)
    if unit.records is None:
        return converter.read_file(path, ctx)
    return converter.read_records(unit.records, unit.offset, path, ctx)


def _consume(item, result: UnitResult, writer: ShardWriter) -> None:
    if isinstance(item, DroppedImage):
        result.images_dropped[item.reason] += 1
        return
    result.rows_in += 1
    if isinstance(item, Reject):
        result.rejected[item.reason] += 1
        result.rejects.append(
            {
                "id": item.id,
                "source_file": result.path,
                "reason": item.reason,
                "detail": item.detail,
            }
        )
    else:
        writer.write(item)
        result.rows_out += 1


def convert_unit(
    unit: WorkUnit,
    converter_name: str,
    ctx: ReadContext,
    out_dir: str,
    options: ShardOptions,
    reporter: Reporter | None = None,
) -> UnitResult:
    """Convert one unit into shards under `out_dir`, counting every input row.

    A failure that is not a row's fault (unreadable file, truncated parquet, broken tar, a bug)
    deletes the unit's shards and is returned in `error`: the caller decides to raise or skip.

    Args:
        unit: the work unit.
        converter_name: a key of `registry.CONVERTERS`.
        ctx: read context.
        out_dir: directory to write shards into (must exist).
        options: shard cutting options.
        reporter: called as `(rows_in, rows_out, rejected_by_reason)` deltas every
            REPORT_EVERY_ROWS rows and at the end (progress bar, Ray metrics).

    Returns:
        The unit's result.
    """
    start = time.perf_counter()
    result = UnitResult(path=unit.path, part=unit.part)
    prefix = f"{unit.file_index:05d}-{Path(unit.path).stem}-p{unit.part:04d}"
    writer = ShardWriter(Path(out_dir), prefix, options)
    reported = (0, 0, Counter())
    try:
        for item in _items(unit, converter_name, ctx):
            _consume(item, result, writer)
            if reporter is not None and result.rows_in - reported[0] >= REPORT_EVERY_ROWS:
                reported = _report(reporter, result, reported)
        result.shards = writer.close()
    except Exception as err:  # noqa: BLE001 - any failure here is the file's; caller decides
        writer.abort()
        rolled_back = UnitResult(path=unit.path, part=unit.part)
        rolled_back.error = "".join(traceback.format_exception_only(type(err), err)).strip()
        result = rolled_back
    # After a rollback nothing more is reported: live counts keep the rows read before the
    # failure, the manifest (built from results) is the truth.
    if reporter is not None and result.error is None:
        _report(reporter, result, reported)
    result.seconds = time.perf_counter() - start
    return result


def _report(reporter: Reporter, result: UnitResult, reported: tuple) -> tuple:
    """Send the counts added since the last report."""
    rows_in, rows_out, rejected = reported
    reporter(result.rows_in - rows_in, result.rows_out - rows_out, dict(result.rejected - rejected))
    return result.rows_in, result.rows_out, Counter(result.rejected)
