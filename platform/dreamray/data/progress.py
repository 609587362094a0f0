"""Where a stage's data stream stands: consumed positions, counters, resume files (pure).

Resume model. Every sample has a *position* in the stage's deterministic stream
(`dreamray.data.mixing`). Each train worker records the positions it has consumed (trainable and
skipped samples alike) at the moment a batch is handed to the train loop. At a checkpoint every
rank writes its `DataState` into its checkpoint dir (`save_data_state`); `load_data_state` merges
the ranks' files: the union of consumed positions and the sum of counters. The driver rebuilds
the dataset from that state, leaving out exactly the consumed positions, so nothing is repeated
and nothing skipped, whatever Ray Data's prefetching or block order did (a position prefetched
but not consumed when the checkpoint was written is produced again). Consumed positions are
stored as sorted disjoint ranges: a prefix [0, n) plus the few holes prefetching leaves.

Granularity: exact at any batch boundary; a train loop checkpoints at optimizer-step
boundaries, where every batch handed out has been trained on.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamray.files import atomic_write_json

STATE_PREFIX = "data_state.rank"
# Fewer samples than this are too few to judge a skip fraction mid-run (1 of 10 is not 10%).
MIN_SAMPLES_FOR_SKIP_CHECK = 200
# Skipped rows named per reason in the error and the stage record (enough to find the pattern).
MAX_SKIP_EXAMPLES = 5


class DataSkipError(RuntimeError):
    """More than `DataSpec.max_skip_fraction` of the samples were skipped."""


class RangeSet:
    """A set of non-negative ints stored as sorted disjoint half-open ranges."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []
        for start, stop in ranges:
            self.add_range(int(start), int(stop))

    def add(self, value: int) -> None:
        """Add one value (fast when values arrive in increasing order)."""
        if self._stops and self._stops[-1] == value:
            self._stops[-1] += 1  # the common case: the next position of the stream
            return
        self.add_range(value, value + 1)

    def add_range(self, start: int, stop: int) -> None:
        """Add [start, stop), merging with touching or overlapping ranges."""
        if stop <= start:
            return
        lo = bisect.bisect_left(self._stops, start)
        hi = bisect.bisect_right(self._starts, stop)
        if lo < hi:
            start = min(start, self._starts[lo])
            stop = max(stop, self._stops[hi - 1])
        self._starts[lo:hi] = [start]
        self._stops[lo:hi] = [stop]

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._stops[i]

    def __len__(self) -> int:
        return sum(b - a for a, b in zip(self._starts, self._stops, strict=True))

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, sorted."""
        return list(zip(self._starts, self._stops, strict=True))

    def prefix_end(self) -> int:
        """The smallest value not in the set (every value below it is in)."""
        return self._stops[0] if self._starts and self._starts[0] == 0 else 0

    def union(self, other: RangeSet) -> RangeSet:
        """A new set holding both."""
        return RangeSet(self.ranges() + other.ranges())


@dataclass
class DataCounters:
    """What one rank (or, merged, a whole stage) has consumed."""

    samples: int = 0  # trainable samples handed to the train loop
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    per_source: dict[str, int] = field(default_factory=dict)  # trainable samples per source
    clip_images: int = 0
    sd_images: int = 0
    images_dropped: int = 0
    tokens: int = 0  # non-pad tokens
    # reason -> the first few skipped rows (`<shard> row <n> (id <id>)`), for error messages
    skip_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        """Skipped samples, all reasons."""
        return sum(self.skipped.values())

    @property
    def seen(self) -> int:
        """Samples consumed, trainable or skipped."""
        return self.samples + self.num_skipped

    def add(self, other: DataCounters) -> None:
        """Add another counter set into this one."""
        self.samples += other.samples
        self.skipped = dict(Counter(self.skipped) + Counter(other.skipped))
        self.per_source = dict(Counter(self.per_source) + Counter(other.per_source))
        self.clip_images += other.clip_images
        self.sd_images += other.sd_images
        self.images_dropped += other.images_dropped
        self.tokens += other.tokens
        self.add_examples((reason, where) for reason, wheres in other.skip_examples.items()
                          for where in wheres)

    def add_examples(self, examples: Iterable[tuple[str, str]]) -> None:
        """Keep up to `MAX_SKIP_EXAMPLES` skipped rows per reason.

        Args:
            examples: ``(reason, where)`` pairs.
        """
        for reason, where in examples:
            kept = self.skip_examples.setdefault(reason, [])
            if len(kept) < MAX_SKIP_EXAMPLES and where not in kept:
                kept.append(where)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (also what a stage record stores)."""
        return {
            "samples": self.samples,
            "skipped": dict(sorted(self.skipped.items())),
            "per_source": dict(sorted(self.per_source.items())),
            "clip_images": self.clip_images,
            "sd_images": self.sd_images,
            "images_dropped": self.images_dropped,
            "tokens": self.tokens,
            "skip_examples": {k: list(v) for k, v in sorted(self.skip_examples.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataCounters:
        """Inverse of `to_dict`."""
        values = {k: (dict(v) if isinstance(v, dict) else int(v)) for k, v in data.items()}
        # data states written before rows were named carry no examples
        values["skip_examples"] = {k: list(v) for k, v in values.pop("skip_examples", {}).items()}
        return cls(**values)


@dataclass
class BatchInfo:
    """Accounting of one micro-batch: its samples and the skipped ones consumed with it."""

    positions: list[int]  # of the trainable samples, in batch order
    sample_ids: list[str]
    sources: list[str]
    num_clip_images: int
    num_sd_images: int
    num_tokens: int
    images_dropped: int
    skipped: dict[str, int]  # reason -> count, consumed while filling this batch
    skipped_positions: list[int]
    skipped_examples: list[tuple[str, str]] = field(default_factory=list)  # (reason, where)


@dataclass
class DataState:
    """A resumable data position: consumed positions plus counters, tied to one plan."""

    fingerprint: str  # identifies the stream (sources, weights, seed): see pipeline
    consumed: RangeSet = field(default_factory=RangeSet)
    counters: DataCounters = field(default_factory=DataCounters)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "fingerprint": self.fingerprint,
            "consumed": [list(r) for r in self.consumed.ranges()],
            "counters": self.counters.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataState:
        """Inverse of `to_dict`."""
        ranges = [(int(a), int(b)) for a, b in data["consumed"]]
        return cls(data["fingerprint"], RangeSet(ranges), DataCounters.from_dict(data["counters"]))


class DataProgress:
    """One train worker's data position; `iter_train_batches` updates it per batch."""

    def __init__(self, fingerprint: str, resume: DataState | None = None, rank: int = 0) -> None:
        """Args:
        fingerprint: the stream's fingerprint (`pipeline.stage_fingerprint`).
        resume: the merged state of the checkpoint being resumed, if any.
        rank: this worker's rank; only rank 0 carries the resumed counters forward, so that
            summing the ranks' counters at the next resume counts them once.

        Raises:
            ValueError: the resumed state belongs to another stream.
        """
        if resume is not None and resume.fingerprint != fingerprint:
            raise ValueError(
                f"data state is for stream {resume.fingerprint}, not {fingerprint}: the "
                "stage's data spec changed since the checkpoint"
            )
        self.state = DataState(fingerprint)
        if resume is not None:
            self.state.consumed = RangeSet(resume.consumed.ranges())
            if rank == 0:
                self.state.counters.add(resume.counters)

    def record(self, info: BatchInfo) -> None:
        """Count a batch that is being handed to the train loop."""
        for pos in sorted(info.positions + info.skipped_positions):
            self.state.consumed.add(pos)
        c = self.state.counters
        c.samples += len(info.positions)
        c.skipped = dict(Counter(c.skipped) + Counter(info.skipped))
        c.per_source = dict(Counter(c.per_source) + Counter(info.sources))
        c.clip_images += info.num_clip_images
        c.sd_images += info.num_sd_images
        c.images_dropped += info.images_dropped
        c.tokens += info.num_tokens
        c.add_examples(info.skipped_examples)


def save_data_state(directory: str | Path, rank: int, state: DataState) -> Path:
    """Write one rank's state into a checkpoint dir (atomically: temp file, then rename).

    Args:
        directory: the rank's checkpoint directory.
        rank: the worker's rank (the file name holds it, so ranks never collide when Ray merges
            the rank directories into one checkpoint).
        state: `DataProgress.state`.

    Returns:
        The file written.
    """
    target = Path(directory) / f"{STATE_PREFIX}{rank}.json"
    return atomic_write_json(target, state.to_dict(), indent=None, sort_keys=False)


def load_data_state(directory: str | Path) -> DataState | None:
    """Merge every rank's data state found in a checkpoint dir.

    Args:
        directory: the checkpoint directory.

    Returns:
        The union of consumed positions and the sum of counters, or None if no file is there.

    Raises:
        ValueError: the files disagree on the stream fingerprint.
    """
    files = sorted(Path(directory).glob(f"{STATE_PREFIX}*.json"))
    states = [DataState.from_dict(json.loads(f.read_text())) for f in files]
    if not states:
        return None
    prints = {s.fingerprint for s in states}
    if len(prints) > 1:
        raise ValueError(f"{directory}: data state files of different streams {sorted(prints)}")
    merged = DataState(states[0].fingerprint)
    for s in states:
        merged.consumed = merged.consumed.union(s.consumed)
        merged.counters.add(s.counters)
    return merged


def check_skip_fraction(counters: DataCounters, max_skip_fraction: float, final: bool) -> None:
    """Stop the run when too many samples are skipped.

    Args:
        counters: a rank's (or the merged) counters.
        max_skip_fraction: `DataSpec.max_skip_fraction`.
        final: the stage's end: judge any count. Mid-run, fewer than
            MIN_SAMPLES_FOR_SKIP_CHECK samples are not judged.

    Raises:
        DataSkipError: skipped / seen > max_skip_fraction, with the counts by reason and the
            first skipped rows of each reason (shard file, row, id).
    """
    seen = counters.seen
    if seen == 0 or (not final and seen < MIN_SAMPLES_FOR_SKIP_CHECK):
        return
    fraction = counters.num_skipped / seen
    if fraction > max_skip_fraction:
        raise DataSkipError(
            f"{counters.num_skipped} of {seen} samples skipped ({fraction:.1%} > "
            f"data.max_skip_fraction={max_skip_fraction:.1%}); by reason: "
            f"{dict(sorted(counters.skipped.items()))}; first rows skipped: "
            f"{_examples_text(counters)}. Fix or re-convert the shards."
        )


def _examples_text(counters: DataCounters) -> str:
    if not counters.skip_examples:
        return "(not recorded)"
    return "; ".join(f"{reason}: {', '.join(wheres)}"
                     for reason, wheres in sorted(counters.skip_examples.items()))
