"""Small pieces of dreamray.train and the launcher's pre-flight: fast, no DeepSpeed engine."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from dreamray.data.progress import RangeSet
from dreamray.orchestration.preflight import (
    StageCheckError,
    check_train_stage,
    input_digests,
    resolve_init,
)
from dreamray.train import faults
from dreamray.train.faults import maybe_kill, parse_fault_env
from dreamray.train.feed import SkipConsumed
from dreamray.train.state import (
    RNG_FILE,
    TrainState,
    capture_rng,
    read_rank_state,
    restore_rng,
    write_rank_state,
)
from dreamray.train.telemetry import JsonlSink, read_history


def test_train_state_round_trip(tmp_path):
    state = TrainState(step=3, samples_rank=6, samples_global=12, nan_steps=1, consecutive_nan=0)
    state.add_skipped({"bad_image": 2})
    state.add_skipped({"bad_image": 1, "too_long": 1})
    assert TrainState.from_json(state.to_json()) == state
    assert state.skipped == {"bad_image": 3, "too_long": 1}
    with pytest.raises(ValueError, match="keys"):
        TrainState.from_json(json.dumps({"step": 1}))
    write_rank_state(tmp_path, state, {"scheduler": {"last_epoch": 3}})
    again, extra = read_rank_state(tmp_path)
    assert again == state and extra["scheduler"] == {"last_epoch": 3}
    # the RNG travels through `weights_only=True`: restoring it reproduces the same draws
    restore_rng(extra["rng"])
    first = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng(extra["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == first


def test_an_rng_file_that_needs_pickle_is_refused_by_name(tmp_path):
    write_rank_state(tmp_path, TrainState(), {})
    torch.save({"rng": {"numpy": np.random.get_state()}}, tmp_path / RNG_FILE)
    with pytest.raises(ValueError, match=f"{RNG_FILE}: not loadable with weights_only=True"):
        read_rank_state(tmp_path)


def test_rng_capture_restore():
    torch.manual_seed(1)
    snap = capture_rng()
    a = (torch.rand(3), random.random(), np.random.rand())
    restore_rng(snap)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_fault_env_parsing():
    assert parse_fault_env(None) == (None, -1)
    assert parse_fault_env("5") == (5, -1)
    assert parse_fault_env("5:0") == (5, 0)
    with pytest.raises(ValueError, match="<step>"):
        parse_fault_env("five")


def test_fault_fires_only_where_asked(tmp_path, monkeypatch):
    exits = []
    monkeypatch.setattr(faults.os, "_exit", exits.append)  # record instead of dying
    run = SimpleNamespace(fault_kill_at_step=3, fault_kill_rank=-1, run_dir=str(tmp_path))
    last, first = SimpleNamespace(rank=1, world_size=2), SimpleNamespace(rank=0, world_size=2)
    maybe_kill(run, last, 2)  # other step
    maybe_kill(run, first, 3)  # other rank
    assert exits == [] and not faults.marker_path(tmp_path, 3).exists()
    maybe_kill(run, last, 3)  # the asked step on the last rank (rank -1)
    assert exits == [faults.KILL_EXIT_CODE] and faults.marker_path(tmp_path, 3).exists()
    maybe_kill(run, last, 3)  # already fired on an earlier attempt: no exit
    off = SimpleNamespace(fault_kill_at_step=None, fault_kill_rank=-1, run_dir=str(tmp_path))
    maybe_kill(off, last, 3)
    on_first = SimpleNamespace(fault_kill_at_step=4, fault_kill_rank=0, run_dir=str(tmp_path))
    maybe_kill(on_first, last, 4)  # rank 0 asked: the last rank stays
    maybe_kill(on_first, first, 4)
    assert exits == [faults.KILL_EXIT_CODE] * 2


def test_skip_consumed_drops_exactly_the_consumed_positions():
    batches = [pa.table({"position": [0, 1, 2], "x": [10, 11, 12]}),
               pa.table({"position": [3, 4], "x": [13, 14]}),
               pa.table({"position": [5], "x": [15]})]
    shard = SimpleNamespace(iter_batches=lambda **kw: iter(batches))
    kept = list(SkipConsumed(shard, RangeSet([(0, 2), (3, 5)])).iter_batches(batch_size=2))
    assert [b.column("position").to_pylist() for b in kept] == [[2], [5]]
    assert [b.column("x").to_pylist() for b in kept] == [[12], [15]]


def test_history_keeps_the_last_record_of_a_repeated_step(tmp_path):
    sink = JsonlSink(tmp_path / "m.jsonl")
    for step, loss in [(1, 1.0), (2, 2.0), (3, 3.0), (3, 3.5), (4, 4.0)]:
        sink.write({"step": step, "loss": loss})
    assert [r["loss"] for r in read_history(tmp_path / "m.jsonl")] == [1.0, 2.0, 3.5, 4.0]
    assert read_history(tmp_path / "missing.jsonl") == []


def _stage(tiny_zoo, **updates):
    from train_helpers import tiny_stage

    return tiny_stage(tiny_zoo, "stage2", **updates)


def test_preflight_missing_init_and_resolution(tiny_zoo, tmp_path):
    stage = _stage(tiny_zoo, init={"llm": "base", "plugins": "stage:merge"})
    with pytest.raises(StageCheckError) as err:
        check_train_stage(stage, inputs={})
    assert "init.plugins: stage:merge has no input artifact" in str(err.value)
    with pytest.raises(StageCheckError, match="not an artifact dir"):
        check_train_stage(stage, inputs={"merge": str(tmp_path)})
    (tmp_path / "config.json").write_text("{}")
    assert resolve_init(stage, {"merge": str(tmp_path)}).init.plugins == str(tmp_path)


def test_preflight_tied_lm_head(tiny_zoo, tmp_path):
    import shutil

    llm = tmp_path / "llm"
    shutil.copytree(tiny_zoo.llm, llm)
    config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    stage = _stage(tiny_zoo)
    model = stage.model.model_copy(update={"llm_path": str(llm)})
    stage = stage.model_copy(update={"model": model})
    with pytest.raises(StageCheckError, match="lm_head has no parameters"):
        check_train_stage(stage, inputs={})


def test_input_digests_from_manifest_or_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "w.bin").write_bytes(b"1")
    (b / "w.bin").write_bytes(b"1")
    (b / "stage.json").write_text(json.dumps({"files": {"w.bin": "f" * 64}}))
    digests = input_digests({"a": str(a), "b": str(b)})
    assert set(digests) == {"a", "b"} and digests["a"] != digests["b"]
