"""The Ray Data pipeline: two consumers through streaming_split, exact mix, skips, exact resume."""

from __future__ import annotations

import io
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dreamray.config.specs import TrainStageSpec
from dreamray.data.batches import iter_train_batches, make_collate_spec
from dreamray.data.pipeline import (
    StagePlan,
    build_stage_dataset,
    index_sources,
    plan_length,
    stage_fingerprint,
)
from dreamray.data.progress import DataProgress, load_data_state, save_data_state
from dreamray.data.schema import rows_to_table
from dreamray.data.telemetry import DataMetrics

WEIGHTS = {"pairs": 0.5, "docs": 0.3, "chat": 0.2}
MICRO = 2


def png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def base_row(source, i, kind, texts, images, after, roles=()):
    return {
        "id": f"{source}/0/{i}",
        "source": source,
        "kind": kind,
        "texts": texts,
        "roles": list(roles),
        "instruction": None,
        "images": images,
        "image_after": after,
        "image_sim": None,
    }


def make_rows(source: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        if source == "pairs":
            image = png(i)[:40] if i == 3 else png(i)  # truncated: fails only at decode
            rows.append(base_row(source, i, "pair", [f"a photo number {i}"], [image], [0]))
        elif source == "docs":
            texts = [f"sentence {i} one.", "two.", "three."]
            rows.append(base_row(source, i, "document", texts, [png(i), png(i + 1)], [0, 2]))
        else:
            images = [png(i)] if i != 2 else []  # one placeholder, no image: skipped
            turns = ["<image>\nwhat is it?", f"thing {i}."]
            rows.append(
                base_row(
                    source,
                    i,
                    "conversation",
                    turns,
                    images,
                    [0] * len(images),
                    roles=["user", "assistant"],
                )
            )
    return rows


@pytest.fixture(scope="module")
def stage(tmp_path_factory, tiny_zoo):
    root = tmp_path_factory.mktemp("shards")
    sources = []
    for name, n in (("pairs", 20), ("docs", 9), ("chat", 7)):
        (root / name).mkdir()
        pq.write_table(
            rows_to_table(make_rows(name, n)), root / name / "part-0.parquet", row_group_size=4
        )
        sources.append({"name": name, "path": str(root / name), "weight": WEIGHTS[name]})
    return TrainStageSpec.model_validate(
        {
            "model": {
                "llm_path": str(tiny_zoo.llm),
                "vision_path": str(tiny_zoo.vision),
                "diffusion_path": str(tiny_zoo.diffusion),
                "num_dream_queries": 4,
                "max_length": 128,
            },
            "trainable": ["vision_projector"],
            "data": {
                "sources": sources,
                "mode": "joint",
                "num_samples": 60,
                "seed": 3,
                "max_skip_fraction": 0.2,
            },
            "optim": {"lr": 1.0e-3},
            "loss": {"lm": 1.0, "vm": 1.0},
            "deepspeed": {"global_batch_size": 4, "micro_batch_per_gpu": MICRO},
            "scaling": {"num_workers": 2},
        }
    )


def consume(stage, resume, num_batches):
    """Two consumers on one streaming_split, like two Ray Train workers."""
    # one map actor: each new actor process spends seconds importing torch
    ds = build_stage_dataset(stage, stage.model.llm_path, resume, chunk_size=16, map_workers=1)
    spec = make_collate_spec(stage, stage.model.llm_path)
    fingerprint = stage_fingerprint(stage.data)
    shards = ds.streaming_split(2, equal=True)
    progress = [DataProgress(fingerprint, resume=resume, rank=r) for r in range(2)]
    seen, errors = [[], []], []

    def run(rank):
        metrics = DataMetrics("test", list(WEIGHTS))
        try:
            for batch, info in iter_train_batches(
                shards[rank], spec, MICRO, num_batches, progress[rank]
            ):
                assert batch["input_ids"].shape[0] == len(info.positions) <= MICRO
                assert batch["clip_pixel_values"].shape[0] == info.num_clip_images
                assert batch["sd_pixel_values"].shape[0] == info.num_sd_images
                rates = metrics.record(info)
                seen[rank].append(info)
            assert rates["samples_per_s"] > 0 and rates["images_per_s"] > 0
        except Exception as err:  # surfaced in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return seen, progress


def positions(infos):
    return [p for info in infos for p in info.positions + info.skipped_positions]


def test_streaming_split_is_complete_mixed_and_resumes_exactly(ray_cluster, stage, tmp_path):
    total = plan_length(stage, 16)
    # run 1: each worker stops after 6 micro-batches, as at a checkpoint
    seen, progress = consume(stage, None, num_batches=6)
    assert [len(s) for s in seen] == [6, 6]
    first = positions(seen[0]) + positions(seen[1])
    assert len(first) == len(set(first))  # no sample twice across the two consumers
    for rank in range(2):
        save_data_state(tmp_path / f"rank{rank}", rank, progress[rank].state)
        save_data_state(tmp_path / "merged", rank, progress[rank].state)
    state = load_data_state(tmp_path / "merged")
    assert set(state.consumed.ranges()) and len(state.consumed) == len(first)
    assert state.counters.samples == 2 * 6 * MICRO

    # run 2 (resumed): read to the end of the plan
    seen2, progress2 = consume(stage, state, num_batches=None)
    second = positions(seen2[0]) + positions(seen2[1])
    assert len(second) == len(set(second)) and not set(first) & set(second)  # nothing repeated
    # nothing skipped over: a prefix of the plan (equal=True may drop the last odd rows)
    consumed = sorted(first + second)
    assert consumed == list(range(len(consumed))) and len(consumed) >= total - 4
    assert min(second) == state.consumed.prefix_end()  # continues where it stopped

    # every position holds the sample the deterministic plan puts there
    plan = StagePlan(stage, stage.model.llm_path, index_sources(stage.data), None, 16)
    expected = {pos: row["id"] for c in range(plan.num_chunks) for pos, _, row, _ in plan.rows(c)}
    got = {
        p: i
        for s in seen + seen2
        for info in s
        for p, i in zip(info.positions, info.sample_ids, strict=True)
    }
    assert all(expected[p] == i for p, i in got.items())

    # realised mix over the whole stream, skipped samples included, matches the weights
    source_of = {pos: src for c in range(plan.num_chunks) for pos, src, _, _ in plan.rows(c)}
    shares = np.bincount([list(WEIGHTS).index(source_of[p]) for p in consumed]) / len(consumed)
    assert np.abs(shares - np.array(list(WEIGHTS.values()))).max() < 0.03

    # skips are counted by reason, and counters add up across ranks and runs
    for rank in range(2):
        save_data_state(tmp_path / "final", rank, progress2[rank].state)
    final = load_data_state(tmp_path / "final")
    # the state also holds skips read after the last batch (no batch to hand them out with)
    assert final.consumed.ranges() == [(0, final.counters.seen)]
    assert final.counters.seen - len(consumed) in (0, 1, 2)
    assert set(final.counters.skipped) == {"image_transform_failed", "placeholder_mismatch"}
    # ... and named by shard and row through Ray Data and the per-rank files
    named = final.counters.skip_examples
    assert "pairs/part-0.parquet row 3 (id pairs/0/3)" in " ".join(named["image_transform_failed"])
    assert "chat/part-0.parquet row 2 (id chat/0/2)" in " ".join(named["placeholder_mismatch"])
    assert sum(final.counters.per_source.values()) == final.counters.samples
