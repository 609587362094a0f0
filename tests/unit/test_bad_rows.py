"""Rows whose image bytes no longer decode at train time (corrupted after conversion): skipped,
counted by reason, named by shard file and row when the stage stops over them. No Ray: the
plan's map function is called in this process, and its records are fed to the batcher."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from image_fixtures import random_png

from dreamray.config.specs import TrainStageSpec
from dreamray.data.batches import iter_train_batches, make_collate_spec
from dreamray.data.pipeline import ChunkBuilder, StagePlan, index_sources, stage_fingerprint
from dreamray.data.progress import (
    DataCounters,
    DataProgress,
    DataSkipError,
    check_skip_fraction,
)
from dreamray.data.schema import rows_to_table

BROKEN = (3, 7)  # row 7 is the 4th row of the file's second row group


def _pair(i: int) -> dict:
    # a broken one keeps its header, not its data
    image = random_png(i)[:40] if i in BROKEN else random_png(i)
    return {"id": f"pairs/0/{i}", "source": "pairs", "kind": "pair",
            "texts": [f"a photo number {i}"], "roles": [], "instruction": None,
            "images": [image], "image_after": [0], "image_sim": None}


@pytest.fixture(scope="module")
def stage(tmp_path_factory, tiny_zoo):
    root = tmp_path_factory.mktemp("bad_rows") / "pairs"
    root.mkdir()
    pq.write_table(rows_to_table([_pair(i) for i in range(12)]), root / "part-0.parquet",
                   row_group_size=4)
    return TrainStageSpec.model_validate({
        "model": {"llm_path": str(tiny_zoo.llm), "vision_path": str(tiny_zoo.vision),
                  "diffusion_path": str(tiny_zoo.diffusion), "num_dream_queries": 4,
                  "max_length": 128},
        "trainable": ["vision_projector"],
        "data": {"sources": [{"name": "pairs", "path": str(root), "weight": 1.0}],
                 "mode": "joint", "num_samples": 10, "seed": 0, "max_skip_fraction": 0.1},
        "optim": {"lr": 1.0e-3}, "loss": {"lm": 1.0, "vm": 1.0},
        "deepspeed": {"global_batch_size": 2, "micro_batch_per_gpu": 2},
    })


class _Shard:
    """What the worker's dataset shard gives: Arrow blocks of records."""

    def __init__(self, tables: list[pa.Table]):
        self.tables = tables

    def iter_batches(self, **_kwargs):
        yield from self.tables


def _one_epoch(stage) -> DataCounters:
    plan = StagePlan(stage, stage.model.llm_path, index_sources(stage.data), None, chunk_size=4)
    build = ChunkBuilder(plan)
    shard = _Shard([build({"id": np.array([c])}) for c in range(3)])  # the file's 12 rows
    progress = DataProgress(stage_fingerprint(stage.data))
    spec = make_collate_spec(stage, stage.model.llm_path)
    for _ in iter_train_batches(shard, spec, 2, None, progress):
        pass
    return progress.state.counters


def test_undecodable_rows_are_counted_and_named(stage):
    counters = _one_epoch(stage)
    assert counters.samples == 10 and counters.skipped == {"image_transform_failed": 2}
    shard = f"{stage.data.sources[0].path}/part-0.parquet"
    assert counters.skip_examples == {"image_transform_failed": [
        f"{shard} row {i} (id pairs/0/{i})" for i in BROKEN]}
    check_skip_fraction(counters, 0.2, final=True)  # 2 of 12 is within 20 %


def test_beyond_the_allowed_fraction_the_error_names_shard_and_rows(stage):
    counters = _one_epoch(stage)
    with pytest.raises(DataSkipError) as err:
        check_skip_fraction(counters, stage.data.max_skip_fraction, final=True)
    message = str(err.value)
    assert "2 of 12 samples skipped" in message and "image_transform_failed" in message
    for i in BROKEN:
        assert f"part-0.parquet row {i} (id pairs/0/{i})" in message


def test_examples_survive_the_checkpoint_and_the_merge_of_ranks(stage):
    counters = _one_epoch(stage)
    again = DataCounters.from_dict(counters.to_dict())
    merged = DataCounters()
    merged.add(again)
    merged.add(again)  # the same rows reported twice are named once
    assert merged.skip_examples == counters.skip_examples
    assert merged.skipped == {"image_transform_failed": 4}
    legacy = counters.to_dict()
    del legacy["skip_examples"]  # a data state written before rows were named
    assert DataCounters.from_dict(legacy).skip_examples == {}
