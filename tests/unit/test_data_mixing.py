"""Deterministic mixing, per-epoch shuffles, and the resume bookkeeping (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from dreamray.data.mixing import DrawCounter, MixSchedule, index_source, locate_draws
from dreamray.data.progress import (
    BatchInfo,
    DataCounters,
    DataProgress,
    DataSkipError,
    RangeSet,
    check_skip_fraction,
    load_data_state,
    save_data_state,
)
from dreamray.data.schema import rows_to_table


@pytest.mark.parametrize("weights", [[0.41, 0.59], [0.518, 0.467, 0.016], [1, 1, 1]])
def test_every_window_of_1000_is_within_a_few_percent_of_the_weights(weights):
    schedule = MixSchedule(weights, seed=5)
    src = schedule.sources(0, 30_000)
    target = np.asarray(weights) / sum(weights)
    onehot = np.eye(len(weights), dtype=np.int64)[src]
    csum = np.vstack([np.zeros(len(weights), np.int64), np.cumsum(onehot, axis=0)])
    windows = (csum[1000:] - csum[:-1000]) / 1000.0  # every window of 1000 consecutive
    assert np.abs(windows - target).max() < 0.01


def test_schedule_is_deterministic_per_seed_and_counts_are_consistent():
    a, b = MixSchedule([1, 2], seed=1), MixSchedule([1, 2], seed=1)
    assert np.array_equal(a.sources(100, 900), b.sources(100, 900))
    assert not np.array_equal(a.sources(0, 200), MixSchedule([1, 2], seed=2).sources(0, 200))
    counter = DrawCounter(a, 5000, step=256)
    for pos in (0, 1, 255, 256, 4097, 5000):
        assert np.array_equal(counter.at(pos), a.draw_counts(pos))
    src, draws = a.draws(300, 700, counter.at(300))
    full_src, full_draws = a.draws(0, 700, counter.at(0))
    assert np.array_equal(src, full_src[300:]) and np.array_equal(draws, full_draws[300:])


def write_source(tmp_path, sizes):
    """Files with row groups of the given sizes; row ids are 'f<file>/<row>'."""
    for f, groups in enumerate(sizes):
        rows = [
            {
                "id": f"f{f}/{i}",
                "source": "s",
                "kind": "pair",
                "texts": ["t"],
                "roles": [],
                "instruction": None,
                "images": [b"x"],
                "image_after": [0],
                "image_sim": None,
            }
            for i in range(sum(groups))
        ]
        writer = pq.ParquetWriter(tmp_path / f"part-{f}.parquet", rows_to_table([]).schema)
        start = 0
        for g in groups:
            writer.write_table(rows_to_table(rows[start : start + g]))
            start += g
        writer.close()
    return index_source("s", tmp_path)


def test_each_epoch_draws_every_row_once_in_a_new_order(tmp_path):
    index = write_source(tmp_path, [[3, 5], [4]])
    assert index.num_rows == 12 and len(index.group_rows) == 3
    groups, rows = locate_draws(index, np.arange(36), seed=0)
    keys = [
        (int(index.group_file[g]), int(index.group_index[g]), int(r))
        for g, r in zip(groups, rows, strict=True)
    ]
    epochs = [keys[e * 12 : (e + 1) * 12] for e in range(3)]
    for epoch in epochs:
        assert len(set(epoch)) == 12  # every row exactly once per epoch
        assert all(r < index.group_rows[g] for g, r in zip(groups, rows, strict=True))
    assert epochs[0] != epochs[1]  # reshuffled
    again = locate_draws(index, np.arange(12, 24), seed=0)
    assert np.array_equal(again[0], groups[12:24]) and np.array_equal(again[1], rows[12:24])


def test_range_set_merges_and_reports_its_prefix():
    s = RangeSet()
    for v in [0, 1, 2, 5, 6, 3, 9]:
        s.add(v)
    assert s.ranges() == [(0, 4), (5, 7), (9, 10)] and s.prefix_end() == 4 and len(s) == 7
    s.add_range(4, 9)
    assert s.ranges() == [(0, 10)] and 9 in s and 10 not in s
    assert RangeSet([(3, 5)]).prefix_end() == 0


def info(positions, skipped_positions=(), source="a"):
    return BatchInfo(
        list(positions),
        [str(p) for p in positions],
        [source] * len(positions),
        1,
        2,
        10,
        0,
        {"too_long": len(skipped_positions)} if skipped_positions else {},
        list(skipped_positions),
    )


def test_rank_states_merge_into_a_resumable_state(tmp_path):
    r0, r1 = DataProgress("fp", rank=0), DataProgress("fp", rank=1)
    r0.record(info([0, 1, 4, 5], skipped_positions=[2]))
    r1.record(info([3, 6, 8], source="b"))
    save_data_state(tmp_path, 0, r0.state)
    save_data_state(tmp_path, 1, r1.state)
    merged = load_data_state(tmp_path)
    assert merged.consumed.ranges() == [(0, 7), (8, 9)]
    assert merged.counters.samples == 7 and merged.counters.skipped == {"too_long": 1}
    assert merged.counters.per_source == {"a": 4, "b": 3}
    # resumed: rank 0 carries the counters, every rank the consumed positions
    again0 = DataProgress("fp", resume=merged, rank=0)
    again1 = DataProgress("fp", resume=merged, rank=1)
    assert again0.state.counters.samples == 7 and again1.state.counters.samples == 0
    assert 8 in again1.state.consumed
    with pytest.raises(ValueError, match="changed"):
        DataProgress("other", resume=merged)
    assert load_data_state(tmp_path / "nothing") is None


def test_skip_fraction_check():
    ok = DataCounters(samples=990, skipped={"too_long": 10})
    check_skip_fraction(ok, 0.05, final=True)
    bad = DataCounters(samples=150, skipped={"image_transform_failed": 50})
    with pytest.raises(DataSkipError, match="image_transform_failed"):
        check_skip_fraction(bad, 0.05, final=False)
    early = DataCounters(samples=9, skipped={"too_long": 1})
    check_skip_fraction(early, 0.05, final=False)  # too few to judge mid-run
    with pytest.raises(DataSkipError):
        check_skip_fraction(early, 0.05, final=True)


def test_pure_data_modules_import_neither_ray_nor_deepspeed():
    import subprocess
    import sys

    modules = ["sequence", "collate", "transforms", "mixing", "progress", "batches"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('dreamray.data.' + m)\n"
        "print([m for m in ('ray', 'deepspeed') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
