"""Deterministic weighted mixing of sources and each source's shuffled draw order (no Ray).

A stage's data is one stream of *positions* 0, 1, 2, ...; everything about a position is a pure
function of (seed, sources, position), so any position can be rebuilt on its own (that is what
makes resuming exact, see `dreamray.data.progress`):

- `MixSchedule`: position p -> source. A golden-ratio (Kronecker) low-discrepancy sequence
  u_p = frac(offset + p * 0.618...) is bucketed by the cumulative weights; every window of n
  consecutive positions holds each source within O(log n) samples of n * weight.
- The k-th draw of a source -> (row group, row): epoch e = k // rows; the source's row groups are
  permuted per epoch, and the rows inside each group permuted again, so a source is shuffled
  every epoch and cycled when exhausted. Shuffling is two-level (group order, then rows inside a
  group) rather than global so that consecutive draws of a source hit the same small parquet row
  group: a global shuffle would read a whole row group of images for every sample.

All randomness is integer hashing (splitmix64) on uint64 arrays: bit-identical on every machine
and numpy version, unlike `numpy.random` streams.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dreamray.data import manifest

# 2^64 / golden ratio, odd: the Kronecker step in fixed point (exact integer arithmetic).
_GOLDEN_STEP = np.uint64(0x9E3779B97F4A7C15)
_COUNT_CHUNK = 1 << 20  # positions per vectorised counting step (bounded memory)
REQUIRED_COLUMNS = ("id", "kind", "texts", "roles", "instruction", "images", "image_after")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised: a bijective, well-mixed hash of uint64 values."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def stable_key(*parts: object) -> int:
    """A 64-bit key from any printable parts, stable across processes and machines.

    Args:
        parts: values whose `str` identifies the key (seed, names, epoch, ...).

    Returns:
        An unsigned 64-bit integer.
    """
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def stable_permutation(n: int, key: int) -> np.ndarray:
    """A permutation of range(n) determined by `key` alone.

    Args:
        n: length.
        key: a 64-bit key (see `stable_key`).

    Returns:
        int64 array, a permutation of 0..n-1.
    """
    with np.errstate(over="ignore"):
        hashed = _mix64(np.arange(n, dtype=np.uint64) + np.uint64(key))
    return np.argsort(hashed, kind="stable").astype(np.int64)


# A source's group order is needed by every chunk of an epoch: argsort of 100k groups per chunk
# would dominate the bookkeeping on a real source. Callers never modify the returned array.
_group_order = functools.lru_cache(maxsize=32)(stable_permutation)


class MixSchedule:
    """Which source each position of the stream draws from."""

    def __init__(self, weights: Sequence[float], seed: int) -> None:
        """Args:
        weights: positive mixing weights, one per source (normalised here).
        seed: the stage's data seed; it shifts the sequence's start.

        Raises:
            ValueError: if a weight is not positive or there is no source.
        """
        if not weights or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be positive and non-empty, got {list(weights)}")
        total = float(sum(weights))
        cum = np.cumsum([w / total for w in weights])[:-1]
        # integer edges in [0, 2^64): exact comparisons, no float rounding at bucket borders
        self._edges = np.array([min(int(c * 2.0**64), 2**64 - 1) for c in cum], dtype=np.uint64)
        self._offset = np.uint64(stable_key("mix", seed))
        self.num_sources = len(weights)

    def sources(self, start: int, stop: int) -> np.ndarray:
        """Source index of every position in [start, stop).

        Returns:
            int64 array of length stop - start.
        """
        pos = np.arange(start, stop, dtype=np.uint64)
        with np.errstate(over="ignore"):
            u = self._offset + pos * _GOLDEN_STEP
        return np.searchsorted(self._edges, u, side="right").astype(np.int64)

    def draw_counts(self, stop: int) -> np.ndarray:
        """How many positions before `stop` draw from each source.

        Returns:
            int64 array [num_sources].
        """
        counts = np.zeros(self.num_sources, dtype=np.int64)
        for lo in range(0, stop, _COUNT_CHUNK):
            src = self.sources(lo, min(stop, lo + _COUNT_CHUNK))
            counts += np.bincount(src, minlength=self.num_sources)
        return counts

    def draws(self, start: int, stop: int, counts_at_start: np.ndarray) -> tuple:
        """Source and per-source draw number of every position in [start, stop).

        Args:
            start, stop: the position range.
            counts_at_start: `draw_counts(start)`.

        Returns:
            (sources, draw_index), two int64 arrays of length stop - start.
        """
        src = self.sources(start, stop)
        draw = np.empty_like(src)
        for s in range(self.num_sources):
            mask = src == s
            draw[mask] = counts_at_start[s] + np.arange(int(mask.sum()), dtype=np.int64)
        return src, draw


@dataclass(frozen=True)
class SourceIndex:
    """The row groups of one source's parquet shards, read from the file footers only."""

    name: str
    files: tuple[str, ...]
    group_file: np.ndarray  # per row group: index into `files`
    group_index: np.ndarray  # per row group: the group's index inside its file
    group_rows: np.ndarray  # per row group: number of rows

    @property
    def num_rows(self) -> int:
        """Rows in the source."""
        return int(self.group_rows.sum())

    def origin(self, group: int, row: int) -> str:
        """``"<shard file> row <n>"``: where row `row` of row group `group` is, counted from
        the top of its file (what a user opens the shard at).

        Args:
            group: index into this source's row-group arrays.
            row: row inside that group.

        Returns:
            The file path and the row's index in the file.
        """
        return f"{self.files[self.group_file[group]]} row {self.file_row(group, row)}"

    def file_row(self, group: int, row: int) -> int:
        """The index in its shard file of row `row` of row group `group`."""
        same_file = self.group_file == self.group_file[group]
        before = same_file & (self.group_index < self.group_index[group])
        return int(self.group_rows[before].sum()) + row

    def file_rows(self) -> list[int]:
        """Rows in each shard file, in `files` order."""
        return [int(self.group_rows[self.group_file == i].sum()) for i in range(len(self.files))]


def shard_files(path: str | Path) -> list[str]:
    """The shard files of a source directory.

    A converted directory (with ``manifest.json``) lists its shards in the manifest, in order;
    a hand-made one is globbed (``*.parquet`` below it, sorted, ``rejects.parquet`` excluded).

    Args:
        path: the shard directory.

    Returns:
        Shard file paths.
    """
    root = Path(path)
    if (root / manifest.MANIFEST_NAME).is_file():
        return [str(p) for p in manifest.shard_paths(root)]
    found = (p for p in root.rglob("*.parquet") if p.name != manifest.REJECTS_NAME)
    return sorted(str(p) for p in found)


def index_source(name: str, path: str | Path) -> SourceIndex:
    """Index a shard directory (its `shard_files`), from the parquet footers only.

    Args:
        name: the source's name in the stage's data spec.
        path: the shard directory.

    Returns:
        The source's row-group index.

    Raises:
        FileNotFoundError: no parquet file under `path`.
        ValueError: a file lacks a required column, or the source has no rows.
    """
    files = shard_files(path)
    if not files:
        raise FileNotFoundError(f"source {name!r}: no *.parquet under {path}")
    g_file, g_index, g_rows = [], [], []
    for i, f in enumerate(files):
        parquet = pq.ParquetFile(f)
        meta = parquet.metadata
        missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(f"source {name!r}: {f} lacks columns {missing}")
        for g in range(meta.num_row_groups):
            if meta.row_group(g).num_rows:
                g_file.append(i)
                g_index.append(g)
                g_rows.append(meta.row_group(g).num_rows)
    if not g_rows:
        raise ValueError(f"source {name!r}: {path} holds no rows")
    as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return SourceIndex(name, tuple(files), as_array(g_file), as_array(g_index), as_array(g_rows))


def locate_draws(index: SourceIndex, draws: np.ndarray, seed: int) -> tuple:
    """Map draw numbers of one source to (row group, row inside the group).

    Args:
        index: the source's index.
        draws: int64 draw numbers (the k-th sample taken from this source).
        seed: the stage's data seed.

    Returns:
        (groups, rows): int64 arrays; `groups` index the source's row-group arrays.
    """
    n = index.num_rows
    groups = np.empty_like(draws)
    rows = np.empty_like(draws)
    epochs = draws // n
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        order = _group_order(len(index.group_rows), stable_key(seed, index.name, epoch))
        ends = np.cumsum(index.group_rows[order])
        offset = draws[sel] % n
        slot = np.searchsorted(ends, offset, side="right")
        groups[sel] = order[slot]
        rows[sel] = offset - (ends[slot] - index.group_rows[order][slot])
    for epoch, group in {(int(e), int(g)) for e, g in zip(epochs, groups, strict=True)}:
        sel = (epochs == epoch) & (groups == group)
        key = stable_key(seed, index.name, epoch, "group", group)
        rows[sel] = stable_permutation(int(index.group_rows[group]), key)[rows[sel]]
    return groups, rows


class DrawCounter:
    """`MixSchedule.draw_counts` at any position, from counts stored every `step` positions."""

    def __init__(self, schedule: MixSchedule, stop: int, step: int = 1 << 16) -> None:
        """Args:
        schedule: the mix.
        stop: the largest position that will be asked about.
        step: spacing of the stored counts (memory: stop / step x num_sources ints).
        """
        self.schedule = schedule
        self.step = step
        rows = [np.zeros(schedule.num_sources, dtype=np.int64)]
        for lo in range(0, stop, step):
            src = schedule.sources(lo, lo + step)
            rows.append(rows[-1] + np.bincount(src, minlength=schedule.num_sources))
        self._table = np.stack(rows)

    def at(self, position: int) -> np.ndarray:
        """Draws per source before `position`.

        Returns:
            int64 array [num_sources].
        """
        base = position // self.step
        if base >= len(self._table):
            raise ValueError(f"position {position} is past the counter's range")
        src = self.schedule.sources(base * self.step, position)
        return self._table[base] + np.bincount(src, minlength=self.schedule.num_sources)
