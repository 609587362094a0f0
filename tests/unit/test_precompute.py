"""Frozen-tower precompute: feature shards, the train stage's features path and its checks.

The exactness tests run the same stream through both paths: pixels (the towers run in the
forward) and features (a precompute made them first, the forward never calls the towers), and
compare the losses on the same batch under the same RNG (fp32, 1e-5).
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from image_fixtures import random_png
from model_fixtures import built_model
from pydantic import ValidationError

from dreamray.config.precompute_specs import PrecomputeSpec
from dreamray.config.specs import RecipeSpec, TrainStageSpec
from dreamray.data.batches import iter_train_batches, make_collate_spec
from dreamray.data.collate import CLIP_FEATURES, SD_MOMENTS
from dreamray.data.feature_compute import TowerRunner, feature_info, make_feature_shard
from dreamray.data.features import (
    FeatureKey,
    StaleFeaturesError,
    feature_path,
    read_key,
    write_feature_shard,
)
from dreamray.data.pipeline import ChunkBuilder, StagePlan, index_sources, stage_fingerprint
from dreamray.data.progress import DataProgress
from dreamray.data.schema import rows_to_table
from dreamray.data.sequence import SKIP_IMAGE
from dreamray.data.stage_features import StageFeatures
from dreamray.orchestration.identity import precompute_content
from dreamray.train.loop import to_device

NUM_ROWS = 24
MICRO = 2
BAD_ROW = 5  # its only image is not an image


def _row(i: int) -> dict:
    """Pairs (one image, one caption) and documents of 1-2 images; row BAD_ROW is unreadable."""
    if i % 3 == 0 or i == BAD_ROW:
        image = b"not an image" if i == BAD_ROW else random_png(i)
        return {"id": f"d/{i}", "source": "d", "kind": "pair", "texts": [f"a photo number {i}"],
                "roles": [], "instruction": None, "images": [image], "image_after": [0],
                "image_sim": None}
    rng = random.Random(i)
    n_img = rng.randint(1, 2)
    return {"id": f"d/{i}", "source": "d", "kind": "document",
            "texts": [f"word{rng.randint(0, 50)} text {i}", f"more words {i}"], "roles": [],
            "instruction": None, "images": [random_png(100 * i + k) for k in range(n_img)],
            "image_after": sorted(rng.randrange(2) for _ in range(n_img)), "image_sim": None}


@pytest.fixture(scope="module")
def source_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("precompute") / "docs"
    root.mkdir()
    rows = [_row(i) for i in range(NUM_ROWS)]
    pq.write_table(rows_to_table(rows[:16]), root / "part-0.parquet", row_group_size=6)
    pq.write_table(rows_to_table(rows[16:]), root / "part-1.parquet", row_group_size=6)
    return root


def _pre_spec(zoo, root) -> PrecomputeSpec:
    return PrecomputeSpec(vision_path=str(zoo.vision), diffusion_path=str(zoo.diffusion),
                          sources=[{"name": "docs", "path": str(root)}], batch_size=4)


@pytest.fixture(scope="module")
def runner(tiny_zoo, source_root):
    torch.set_num_threads(1)
    return TowerRunner(_pre_spec(tiny_zoo, source_root), torch.device("cpu"))


def _precompute(runner, root, out_dir) -> list:
    feature_info(runner.spec).save(out_dir)
    return [make_feature_shard(runner, "docs", str(root), str(f), str(out_dir))
            for f in sorted(root.glob("*.parquet"))]


@pytest.fixture(scope="module")
def features_dir(runner, source_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    results = _precompute(runner, source_root, out)
    assert [r.status for r in results] == ["made", "made"]
    assert sum(r.rows for r in results) == NUM_ROWS
    assert sum(r.unreadable_rows for r in results) == 1
    return out


def _stage(zoo, root, mode: str, features=None) -> TrainStageSpec:
    return TrainStageSpec.model_validate({
        "model": {"llm_path": str(zoo.llm), "vision_path": str(zoo.vision),
                  "diffusion_path": str(zoo.diffusion), "num_dream_queries": 8,
                  "max_length": 256, "gradient_checkpointing": False},
        "trainable": ["vision_projector", "dream_queries", "condition_projector"],
        "data": {"sources": [{"name": "docs", "path": str(root), "weight": 1.0}],
                 "mode": mode, "num_samples": 8, "seed": 0,
                 "features": None if features is None else str(features)},
        "optim": {"lr": 1.0e-3}, "loss": {"lm": 1.0, "vm": 1.0},
        "deepspeed": {"global_batch_size": MICRO, "micro_batch_per_gpu": MICRO},
    })


class _Shard:
    def __init__(self, tables):
        self.tables = tables

    def iter_batches(self, **_kwargs):
        yield from self.tables


def _batches(stage, num_batches: int = 3):
    plan = StagePlan(stage, stage.model.llm_path, index_sources(stage.data), None, chunk_size=8)
    tables = [ChunkBuilder(plan)({"id": np.array([c])}) for c in range(plan.num_chunks)]
    progress = DataProgress(stage_fingerprint(stage.data))
    spec = make_collate_spec(stage, stage.model.llm_path)
    return list(iter_train_batches(_Shard(tables), spec, MICRO, num_batches, progress)), progress


def _losses(model, batch) -> tuple[float, float, float]:
    torch.manual_seed(1234)
    with torch.no_grad():
            out = model(**to_device(batch, torch.device("cpu"), torch.float32), lm_weight=1.0,
                    vm_weight=1.0)
    return float(out.loss), float(out.lm_loss), float(out.vm_loss)


@pytest.mark.parametrize("mode", ["joint", "comprehension", "creation"])
def test_features_give_the_pixel_loss_without_running_the_towers(tiny_zoo, source_root,
                                                                 features_dir, mode):
    pixel_batches, _ = _batches(_stage(tiny_zoo, source_root, mode))
    feature_batches, _ = _batches(_stage(tiny_zoo, source_root, mode, features_dir))
    model = built_model(tiny_zoo).eval()
    calls = []
    for tower in (model.clip_vision_embedding.clip_vision_model,
                  model.stable_diffusion_head.vae.encoder):
        tower.register_forward_hook(lambda *_: calls.append(1))
    for (pixels, p_info), (features, f_info) in zip(pixel_batches, feature_batches, strict=True):
        assert p_info.positions == f_info.positions
        assert "clip_pixel_values" not in features and CLIP_FEATURES in features
        expected = _losses(model, pixels)
        calls.clear()
        got = _losses(model, features)
        assert not calls, "a tower ran on a features batch"
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert any(b[SD_MOMENTS].shape[0] for b, _ in feature_batches) == (mode != "comprehension")


def test_an_unreadable_image_is_a_recorded_skip_on_both_paths(tiny_zoo, source_root,
                                                              features_dir):
    skips = []
    for features in (None, features_dir):
        batches, _ = _batches(_stage(tiny_zoo, source_root, "joint", features), 16)
        skips.append([(pos, reason) for _, info in batches for pos, reason in
                      zip(info.skipped_positions, info.skipped_examples, strict=True)])
    assert skips[0] == skips[1]
    assert any(reason == SKIP_IMAGE and f"row {BAD_ROW}" in where
               for _, (reason, where) in skips[0]), skips[0]


def test_a_rerun_keeps_current_shards_and_remakes_stale_ones(tiny_zoo, runner, source_root,
                                                             features_dir, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(features_dir, out)
    assert [r.status for r in _precompute(runner, source_root, out)] == ["kept", "kept"]
    path = feature_path(out, "docs", source_root, source_root / "part-1.parquet")
    key = read_key(path)
    write_feature_shard(path, FeatureKey("other towers", key.transform, key.shard), [])
    stage = _stage(tiny_zoo, source_root, "joint", out)
    with pytest.raises(StaleFeaturesError, match=r"part-1.*stale features.*towers"):
        _batches(stage)
    assert [r.status for r in _precompute(runner, source_root, out)] == ["kept", "remade"]
    assert read_key(path) == key
    _batches(stage)


def test_a_changed_shard_is_refused_and_changes_the_precompute_identity(
        tiny_zoo, runner, source_root, features_dir, tmp_path):
    root = tmp_path / "docs"
    shutil.copytree(source_root, root)
    out = tmp_path / "features"
    shutil.copytree(features_dir, out)
    spec = _pre_spec(tiny_zoo, root)
    feature_info(spec).save(out)  # the copied features, as if made from `root`
    stage_spec = {"kind": "precompute", "precompute": spec.model_dump()}
    before = precompute_content(_precompute_stage(stage_spec))
    rows = [_row(i) for i in range(16, NUM_ROWS)][::-1]  # the same rows, another order
    pq.write_table(rows_to_table(rows), root / "part-1.parquet", row_group_size=6)
    assert precompute_content(_precompute_stage(stage_spec)) != before
    stage = _stage(tiny_zoo, root, "joint")
    sources = list(zip(index_sources(stage.data), stage.data.sources, strict=True))
    with pytest.raises(StaleFeaturesError, match=r"part-1\.parquet.*stale features.*shard"):
        StageFeatures(str(out), stage.model, sources)


def _precompute_stage(raw: dict):
    from dreamray.config.precompute_specs import PrecomputeStageSpec

    return PrecomputeStageSpec.model_validate(raw)


# -- recipe checks -------------------------------------------------------------------------------


def _recipe(tmp_path, train_updates: dict, pre_updates: dict | None = None) -> dict:
    model = {"llm_path": "llm", "vision_path": "clip", "diffusion_path": "sd"}
    pre = {"kind": "precompute", "precompute": {
        "vision_path": "clip", "diffusion_path": "sd",
        "sources": [{"name": "laion", "path": "data/laion"}], **(pre_updates or {})}}
    data = {"sources": [{"name": "laion", "path": "data/laion", "weight": 1.0}],
            "mode": "creation", "num_samples": 8, "features": "stage:features"}
    train = {"needs": ["features"], "model": model, "trainable": ["condition_projector"],
             "data": data, "optim": {"lr": 1e-3}, "loss": {"lm": 0.0, "vm": 1.0},
             "deepspeed": {"global_batch_size": 2, "micro_batch_per_gpu": 2}}
    for key, value in train_updates.items():
        section, _, field = key.partition(".")
        if field:
            train[section] = {**train[section], field: value}
        else:
            train[section] = value
    return {"name": "r", "stages": {"features": pre, "stage1": train}}


@pytest.mark.parametrize("updates, pre_updates, message", [
    ({"data.random_flip": True}, None, "data.features: precomputed features have no flip"),
    ({"trainable": ["vision_encoder"]}, None, r"trains \['vision_encoder'\]"),
    ({"init": {"plugins": "some/artifact"}}, None, "only a stage whose plugins start from"),
    ({}, {"vision_path": "other_clip"}, "model.vision_path is 'clip' but features"),
    ({}, {"sources": [{"name": "laion", "path": "elsewhere"}]},
     r"data.sources.0 \(laion: data/laion\) is not among features's precompute.sources"),
    ({"data.features": "stage:missing"}, None, "reads unknown stage 'missing'"),
])
def test_recipe_errors_name_the_key(tmp_path, updates, pre_updates, message):
    with pytest.raises(ValidationError, match=message):
        RecipeSpec.model_validate(_recipe(tmp_path, updates, pre_updates))


def test_features_must_name_a_precompute_stage(tmp_path):
    raw = _recipe(tmp_path, {})
    raw["stages"]["other"] = raw["stages"]["stage1"]
    raw["stages"]["stage1"] = {**raw["stages"]["stage1"], "needs": ["other"],
                               "data": {**raw["stages"]["stage1"]["data"],
                                        "features": "stage:other"}}
    with pytest.raises(ValidationError, match="stage 'other' is a train stage, not precompute"):
        RecipeSpec.model_validate(raw)


def test_the_dry_run_describes_the_precompute_and_who_reads_it(tmp_path):
    from dreamray.orchestration.plan import describe_stage

    recipe = RecipeSpec.model_validate(_recipe(tmp_path, {}))
    pre = "\n".join(describe_stage("features", recipe))
    assert "features [precompute]" in pre and "laion (data/laion)" in pre
    assert "1 actors x {CPU: 1, GPU: 0}" in pre
    assert "features: stage:features" in "\n".join(describe_stage("stage1", recipe))
