"""Resumable evaluation results: an append-only JSONL store keyed by item id, atomic JSON files.

A long evaluation (30K captions x 8 seeds, or 200K VQA questions) writes one record per item as
soon as a chunk finishes; a re-run reads the store, skips the ids already there and continues.
A crash can leave at most a torn last line, which is ignored on reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# the captioned sample grid an eval writes beside its scores (read by the run report)
GRID_FILE = "grid.png"
# an eval stage's result (scores and card), read by the run report's learning table
RESULT_FILE = "result.json"

ID_KEY = "id"


class ResultsStore:
    """Records `{"id": ..., ...}` in a JSONL file; the last record of an id wins."""

    def __init__(self, path: str | Path) -> None:
        """Open (or prepare to create) the store at `path`."""
        self.path = Path(path)
        self._records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self._records = _read_jsonl(self.path)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._records

    def done_ids(self) -> set[str]:
        """Ids that already have a record."""
        return set(self._records)

    def pending(self, item_ids: Iterable[Any]) -> list[str]:
        """The ids among `item_ids` (as strings, order kept) without a record yet."""
        return [str(i) for i in item_ids if str(i) not in self._records]

    def records(self) -> dict[str, dict[str, Any]]:
        """Every record by id (a copy)."""
        return dict(self._records)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Persist records (flushed and fsynced before returning).

        Args:
            records: dicts that each carry an `id`.

        Returns:
            The number of records written.

        Raises:
            KeyError: a record without `id`.
        """
        lines, added = [], {}
        for record in records:
            if ID_KEY not in record:
                raise KeyError(f"result record without {ID_KEY!r}: {record}")
            record = {**record, ID_KEY: str(record[ID_KEY])}
            lines.append(json.dumps(record, sort_keys=True))
            added[record[ID_KEY]] = record
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        self._records.update(added)
        return len(lines)


def _read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # a torn last line from a crash mid-write: that item is simply redone
            record = json.loads(line)
            records[str(record[ID_KEY])] = record
    return records
