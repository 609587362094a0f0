"""Sequence packing (`data.packing`): the packer's layout, the packed batch, attention that never
crosses a sample, the loss and the resume bookkeeping equal to the unpacked ones, config errors.

The data tests run the real stage plan (sequence builder, image transforms) in this process on
MMC4-like documents of 1-3 images plus pairs, like test_bad_rows.py; no Ray.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from image_fixtures import random_png
from model_fixtures import built_model
from pydantic import ValidationError
from step_grads import make_diffusion_deterministic

from dreamray.config import RecipeError, load_recipe
from dreamray.config.specs import TrainStageSpec
from dreamray.data.batches import iter_train_batches, make_collate_spec
from dreamray.data.collate import POSITION_IDS, CollateSpec, collate, count_samples
from dreamray.data.packing import (
    PackingLayoutError,
    pack_rows,
    packed_positions,
    stage_pack_length,
    stage_pack_pool,
)
from dreamray.data.pipeline import ChunkBuilder, StagePlan, index_sources, stage_fingerprint
from dreamray.data.progress import DataProgress
from dreamray.data.records import make_record
from dreamray.data.schema import rows_to_table
from dreamray.model.packed_attention import run_packed_llm
from dreamray.model.tokens import IGNORE_INDEX

TINY = Path(__file__).resolve().parents[2] / "pipelines" / "recipes" / "tiny.yaml"
NUM_ROWS = 24
MICRO = 6
MAX_LENGTH = 160
TOLERANCE = 1e-5  # the bar, fp32


# -- the packer ----------------------------------------------------------------------------------


def test_pack_rows_places_every_sample_once_within_the_limit():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 20))]
        rows = pack_rows(lengths, 100)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
        # first fit's guarantee: no two rows could be merged into one of the batch's width
        sums = [sum(lengths[i] for i in row) for row in rows]
        assert all(x + y > max(sums) for k, x in enumerate(sums) for y in sums[k + 1 :])
        assert rows == pack_rows(list(lengths), 100), "same lengths, same layout"


def test_pack_rows_fills_rows_and_narrows_them():
    assert pack_rows([5, 3, 7, 2, 9, 1], 10) == [[4], [2, 3], [0, 1, 5]]  # widths 9, 9, 9
    assert pack_rows([4, 4], 100) == [[0, 1]]
    assert pack_rows([60, 60], 100) == [[0], [1]]


def test_pack_rows_refuses_a_sample_over_the_limit():
    with pytest.raises(ValueError, match=r"\(1, 11\)"):
        pack_rows([3, 11], 10)
    with pytest.raises(ValueError, match="empty micro-batch"):
        pack_rows([], 10)


def test_positions_restart_per_sample_and_over_the_padding():
    assert packed_positions([3, 2], 7) == [0, 1, 2, 0, 1, 0, 1]
    assert packed_positions([4], 4) == [0, 1, 2, 3]


# -- the packed batch ----------------------------------------------------------------------------

SPEC = CollateSpec(0, (3, 2, 2), 2, clip_rescale=1.0, clip_mean=(0.0,) * 3, clip_std=(1.0,) * 3)


def _record(i: int, length: int, n_clip: int) -> dict:
    """Sample i: tokens 1000 * (i + 1) + k, labels equal to the tokens, CLIP images filled with
    i (so the batch shows which sample an image came from), one SD image filled with i."""
    ids = [1000 * (i + 1) + k for k in range(length)]
    clip = np.full((n_clip, 3, 2, 2), i, np.uint8)
    sd = np.full((1, 3, 2, 2), i, np.uint8)
    return make_record(i, f"s/{i}", "src", ids, ids, clip, sd, 0)


def test_packed_batch_keeps_every_sample_whole_with_its_images():
    lengths, n_clip = [9, 4, 7, 3, 6], [2, 0, 1, 3, 1]
    records = [_record(i, n, c) for i, (n, c) in enumerate(zip(lengths, n_clip, strict=True))]
    spec = CollateSpec(**{**SPEC.__dict__, "pack_length": 12})
    batch = collate(records, spec)
    assert batch["input_ids"].shape[0] < len(records) and batch["input_ids"].shape[1] <= 12
    assert count_samples(batch) == len(records) == count_samples(collate(records, SPEC))
    assert int(batch["attention_mask"].sum()) == sum(lengths)
    order, clip_owner = [], []
    for r in range(batch["input_ids"].shape[0]):
        ids, pos = batch["input_ids"][r].tolist(), batch[POSITION_IDS][r].tolist()
        labels, mask = batch["labels"][r].tolist(), batch["attention_mask"][r].tolist()
        at = 0
        while at < len(ids) and mask[at]:
            i = ids[at] // 1000 - 1
            n = lengths[i]
            assert ids[at : at + n] == [1000 * (i + 1) + k for k in range(n)], "contiguous"
            assert pos[at : at + n] == list(range(n)), "positions restart at the sample"
            assert labels[at] == IGNORE_INDEX and labels[at + 1 : at + n] == ids[at + 1 : at + n]
            order.append(i)
            clip_owner += [i] * n_clip[i]
            at += n
        assert not any(mask[at:]) and pos[at:] == list(range(len(ids) - at))
    assert sorted(order) == list(range(len(records)))
    # images in packed row-major order: the k-th image belongs to the k-th block's sample
    assert batch["clip_pixel_values"][:, 0, 0, 0].tolist() == clip_owner
    sd_owner = [(v + 1) * 127.5 for v in batch["sd_pixel_values"][:, 0, 0, 0].tolist()]
    assert [round(v) for v in sd_owner] == order
    again = collate(records, spec)
    assert all(torch.equal(batch[k], again[k]) for k in batch), "deterministic"


def test_unpacked_batch_has_no_position_ids():
    batch = collate([_record(0, 5, 1), _record(1, 3, 0)], SPEC)
    assert POSITION_IDS not in batch and batch["input_ids"].shape == (2, 5)
    assert batch["labels"][0, 0] == 1000, "unpacked labels are left as built"


# -- the stage's data, packed and not ------------------------------------------------------------


def _row(i: int) -> dict:
    """MMC4-like: documents of 1-3 images and long-tailed text, and some pairs."""
    rng = random.Random(i)
    if i % 4 == 3:
        return {"id": f"docs/0/{i}", "source": "docs", "kind": "pair",
                "texts": [f"a photo number {i}"], "roles": [], "instruction": None,
                "images": [random_png(i)], "image_after": [0], "image_sim": None}
    n_text = rng.randint(1, 4)
    texts = [" ".join(f"word{rng.randint(0, 50)}" for _ in range(int(rng.paretovariate(1.2) * 3)))
             for _ in range(n_text)]
    n_img = rng.randint(1, 3)
    return {"id": f"docs/0/{i}", "source": "docs", "kind": "document", "texts": texts,
            "roles": [], "instruction": None,
            "images": [random_png(100 * i + k) for k in range(n_img)],
            "image_after": sorted(rng.randrange(n_text) for _ in range(n_img)), "image_sim": None}


def _stage(zoo, root, packing: bool, max_length: int = MAX_LENGTH, mode: str = "joint",
           accum: int = 1):
    return TrainStageSpec.model_validate({
        "model": {"llm_path": str(zoo.llm), "vision_path": str(zoo.vision),
                  "diffusion_path": str(zoo.diffusion), "num_dream_queries": 8,
                  "max_length": max_length, "gradient_checkpointing": False},
        "trainable": ["llm", "vision_projector", "dream_queries", "condition_projector"],
        "data": {"sources": [{"name": "docs", "path": str(root), "weight": 1.0}],
                 "mode": mode, "num_samples": 12, "seed": 0, "packing": packing},
        "optim": {"lr": 1.0e-3}, "loss": {"lm": 1.0, "vm": 10.0},
        "deepspeed": {"global_batch_size": MICRO * accum, "micro_batch_per_gpu": MICRO},
    })


class _Shard:
    def __init__(self, tables):
        self.tables = tables

    def iter_batches(self, **_kwargs):
        yield from self.tables


@pytest.fixture(scope="module")
def docs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing") / "docs"
    root.mkdir()
    pq.write_table(rows_to_table([_row(i) for i in range(NUM_ROWS)]), root / "part-0.parquet",
                   row_group_size=8)
    return root


@pytest.fixture(scope="module")
def stream(tiny_zoo, docs_root):
    """The stage's records (built once; packing does not change the stream)."""
    stage = _stage(tiny_zoo, docs_root, packing=True)
    plan = StagePlan(stage, stage.model.llm_path, index_sources(stage.data), None, chunk_size=8)
    build = ChunkBuilder(plan)
    return [build({"id": np.array([c])}) for c in range(3)]


def _batches(stage, stream, num_batches):
    progress = DataProgress(stage_fingerprint(stage.data))
    spec = make_collate_spec(stage, stage.model.llm_path)
    out = list(iter_train_batches(_Shard(stream), spec, MICRO, num_batches, progress))
    return out, progress.state


@pytest.fixture(scope="module")
def both(tiny_zoo, docs_root, stream):
    """(packed, unpacked): the first two micro-batches and the data state after them."""
    return tuple(_batches(_stage(tiny_zoo, docs_root, p), stream, 2) for p in (True, False))


def test_packing_keeps_the_stream_and_its_resume_positions(both):
    (packed, packed_state), (plain, plain_state) = both
    for (pb, pinfo), (ub, uinfo) in zip(packed, plain, strict=True):
        assert pinfo == uinfo, "the same samples, skips and counts per micro-batch"
        assert count_samples(pb) == count_samples(ub) == MICRO
        assert pb["input_ids"].shape[0] < ub["input_ids"].shape[0], "fewer rows"
        assert pb["input_ids"].shape[1] <= MAX_LENGTH
        assert int(pb["attention_mask"].sum()) == int(ub["attention_mask"].sum())
    assert packed_state.to_dict() == plain_state.to_dict()
    counters = packed_state.counters
    assert counters.seen == counters.samples + counters.num_skipped == 2 * MICRO


def test_packed_loss_and_gradients_equal_the_unpacked_ones(tiny_zoo, both, monkeypatch):
    make_diffusion_deterministic(monkeypatch.setattr)
    (packed, _), (plain, _) = both
    model = built_model(tiny_zoo, num_dream_queries=8, max_length=MAX_LENGTH)
    model.train()
    for (pb, _), (ub, _) in zip(packed, plain, strict=True):
        assert pb["sd_pixel_values"].shape[0] > 0 and pb["clip_pixel_values"].shape[0] > 0
        outs, grads = [], []
        for batch in (pb, ub):
            model.zero_grad(set_to_none=True)
            out = model(**batch, lm_weight=1.0, vm_weight=10.0)
            out.loss.backward()
            outs.append(out)
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
        p_out, u_out = outs
        assert int(p_out.num_lm_tokens) == int(u_out.num_lm_tokens) > 0
        assert p_out.num_dreams == u_out.num_dreams and p_out.num_images == u_out.num_images
        for name in ("loss", "lm_loss", "vm_loss", "lm_loss_sum", "vm_loss_sum"):
            a, b = float(getattr(p_out, name).detach()), float(getattr(u_out, name).detach())
            assert abs(a - b) <= TOLERANCE * max(1.0, abs(b)), (name, a, b)
        assert grads[0].keys() == grads[1].keys() and grads[0]
        for name, g in grads[0].items():
            diff = float((g - grads[1][name]).abs().max())
            assert diff <= TOLERANCE * max(1.0, float(grads[1][name].abs().max())), (name, diff)


def test_a_step_s_samples_share_rows_across_its_micro_batches(tiny_zoo, docs_root, stream,
                                                              both, monkeypatch):
    make_diffusion_deterministic(monkeypatch.setattr)
    (per_micro, _), (plain, plain_state) = both
    stage = _stage(tiny_zoo, docs_root, True, accum=2)
    assert stage_pack_pool(stage) == 2 and stage_pack_pool(stage.model_copy(update={
        "loss": stage.loss.model_copy(update={"normalization": "micro_batch"})})) == 1
    progress = DataProgress(stage_fingerprint(stage.data))
    spec = make_collate_spec(stage, stage.model.llm_path)
    pooled = list(iter_train_batches(_Shard(stream), spec, MICRO, 2, progress, pack_pool=2))
    assert progress.state.to_dict() == plain_state.to_dict(), "the step consumed the same"
    positions = sorted(p for _, info in pooled for p in info.positions)
    assert positions == sorted(p for _, info in plain for p in info.positions)
    assert all(b["input_ids"].shape[0] <= MICRO for b, _ in pooled), "memory bound kept"

    def padding(batches):
        return 1 - sum(int(b["attention_mask"].sum()) for b, _ in batches) / sum(
            b["input_ids"].numel() for b, _ in batches)

    assert padding(pooled) <= padding(per_micro) < padding(plain)
    model = built_model(tiny_zoo, num_dream_queries=8, max_length=MAX_LENGTH)
    model.train()
    sums = []
    with torch.no_grad():
        for batches in (pooled, plain):
            outs = [model(**b, lm_weight=1.0, vm_weight=10.0) for b, _ in batches]
            sums.append([sum(float(getattr(o, k)) for o in outs)
                         for k in ("lm_loss_sum", "vm_loss_sum", "num_lm_tokens", "num_dreams")])
    for a, b in zip(*sums, strict=True):
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(b)), (sums, a, b)
    with pytest.raises(ValueError, match="not a multiple of pack_pool=2"):
        next(iter_train_batches(_Shard(stream), spec, MICRO, 3, None, pack_pool=2))


# -- attention never crosses a sample ------------------------------------------------------------


def _sample(model, n_text: int, seed: int, dream: bool) -> list[int]:
    """``<s> text [DRM] IMG text </s>`` with random words."""
    t = model.token_ids
    words = torch.randint(10, 200, (n_text,), generator=torch.Generator().manual_seed(seed))
    words = words.tolist()
    block = t.dream_block(model.num_queries) if dream else []
    return [t.bos, *words[: n_text // 2], *block, *t.image_block(model.num_patches),
            *words[n_text // 2 :], t.eos]


def _alone(model, sample: list[int], pixels: torch.Tensor) -> torch.Tensor:
    """Hidden states ``[L, D]`` of one sample in a row of its own, no padding."""
    ids = torch.tensor([sample])
    return model.run_llm(model.embed(ids, pixels), torch.ones_like(ids))[1][0]


def _packed(model, rows: list[list[list[int]]], pixels, flatten=None) -> torch.Tensor:
    """Hidden states ``[R, W, D]`` of rows holding samples end to end, padded by 3 or more."""
    width = max(sum(len(s) for s in row) for row in rows) + 3
    ids, positions = [], []
    for row in rows:
        tokens = [t for s in row for t in s]
        ids.append(tokens + [model.token_ids.pad] * (width - len(tokens)))
        positions.append(packed_positions([len(s) for s in row], width))
    ids = torch.tensor(ids)
    return run_packed_llm(model, model.embed(ids, pixels), torch.tensor(positions), flatten)[1]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_token_s_output_ignores_the_sample_packed_beside_it(tiny_zoo, attention):
    model = built_model(tiny_zoo, num_dream_queries=8)
    model.llm.set_attn_implementation(attention)
    model.eval()
    a, b = _sample(model, 12, 1, dream=True), _sample(model, 30, 2, dream=False)
    side = model.clip_vision_embedding.image_size
    pa, pb = torch.randn(1, 3, side, side), torch.randn(1, 3, side, side)
    na, nb = len(a), len(b)
    with torch.no_grad():
        alone_a, alone_b = _alone(model, a, pa), _alone(model, b, pb)
        rows = [[a, b], [b, a]]
        pixels = torch.cat([pa, pb, pb, pa])
        for flatten in (False, True):  # True: the layout flash-attention's varlen kernel gets
            out = _packed(model, rows, pixels, flatten)
            close = dict(rtol=0.0, atol=TOLERANCE)
            torch.testing.assert_close(out[0, :na], alone_a, **close)
            torch.testing.assert_close(out[0, na : na + nb], alone_b, **close)
            torch.testing.assert_close(out[1, :nb], alone_b, **close)
            torch.testing.assert_close(out[1, nb : na + nb], alone_a, **close)
        # the check can fail: one sequence over both samples lets B's tokens see A's
        crossed = _alone(model, a + b, torch.cat([pa, pb]))
        assert float((crossed[na:] - alone_b).abs().max()) > 1e-3


def test_an_attention_that_cannot_keep_samples_apart_is_refused(tiny_zoo):
    model = built_model(tiny_zoo, num_dream_queries=8)
    model.llm.config._attn_implementation = "paged|sdpa"
    with pytest.raises(ValueError, match="data.packing needs one of the LLM attentions"):
        run_packed_llm(model, torch.zeros(1, 4, model.hidden_size), torch.zeros(1, 4).long())


# -- config errors -------------------------------------------------------------------------------


def test_max_length_shorter_than_one_image_sample_is_a_config_error(tiny_zoo, docs_root):
    # the tiny CLIP has 16 patches: a joint document image is 10 + 18 tokens, + <s> </s> = 30
    stage = _stage(tiny_zoo, docs_root, packing=True, max_length=29)
    with pytest.raises(PackingLayoutError, match=r"model\.max_length=29 .* max_length >= 30"):
        stage_pack_length(stage)
    with pytest.raises(PackingLayoutError, match=r"model\.max_length=29"):
        StagePlan(stage, stage.model.llm_path, index_sources(stage.data), None, chunk_size=8)
    assert stage_pack_length(_stage(tiny_zoo, docs_root, packing=True, max_length=30)) == 30
    assert stage_pack_length(_stage(tiny_zoo, docs_root, packing=False, max_length=29)) is None


def test_a_dream_block_longer_than_max_length_fails_validation(tiny_zoo, docs_root):
    raw = _stage(tiny_zoo, docs_root, packing=False, max_length=16).model_dump()
    raw["model"]["num_dream_queries"] = 13  # <s> DRM </s> = 17 tokens
    TrainStageSpec.model_validate(raw)  # without packing the builder drops what does not fit
    raw["data"]["packing"] = True
    with pytest.raises(ValidationError, match=r"model\.max_length=16 .* max_length >= 17"):
        TrainStageSpec.model_validate(raw)
    raw["data"]["mode"] = "comprehension"  # no dream block: the CLIP side is checked later
    TrainStageSpec.model_validate(raw)


def test_the_recipe_error_names_the_stage_and_key():
    overrides = {"stages.stage2.data.packing": True, "stages.stage2.model.num_dream_queries": 300}
    with pytest.raises(RecipeError, match=r"stages\.stage2: model\.max_length=256 is shorter"):
        load_recipe(TINY, overrides, check_paths=False)
    load_recipe(TINY, {"stages.stage2.data.packing": True}, check_paths=False)
