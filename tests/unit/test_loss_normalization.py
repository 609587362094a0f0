"""`loss.normalization: step`: one optimizer step over the same 8 samples gives the same
gradients however it is split into micro-batches and ranks, under ZeRO 0, 2 and 3 and with
gradient checkpointing; `micro_batch` (the reference's behaviour) does not. The logged losses
are the token- and image-weighted means of the step, computed here independently.

Layouts (ranks, accum, micro): A = (1, 1, 8), B = (1, 4, 2), C = (2, 2, 2). In B and C the
last micro-batch holds samples 6 and 7, which supervise no token (see step_grads.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from step_grads import (
    NUM_SAMPLES,
    collate_rows,
    make_diffusion_deterministic,
    rank_step_main,
    run_step,
    step_rows,
    step_stage,
)
from train_helpers import spawn_ranks

from dreamray.train.engine import build_stage_model
from dreamray.train.session import LocalSession

TIMEOUT_S = 300
# The bar, fp32 at 1e-6: every gradient element within ATOL of the reference layout, and
# the whole step's gradient within 1e-6 in relative norm (measured: 1.6e-7 max element, 2.4e-7
# whole). Per parameter, the small projectors and queries, fed through the CLIP tower and the
# UNet on batches of 8 vs 2, differ by 1.2-1.8e-6 in relative norm from fp32 summation order
# alone, so that extra per-parameter check uses 1e-5. micro_batch differs by 0.15 max element,
# 0.28 whole, 0.25-0.3 per parameter: every check separates them by decades.
ATOL, WHOLE_RTOL, PARAM_RTOL = 1e-6, 1e-6, 1e-5


def _in_process(zoo, root, monkeypatch, micro, **kwargs):
    session = LocalSession(root)
    with monkeypatch.context() as m:
        grads = run_step(step_stage(zoo, 1, micro, **kwargs), session, zoo, m.setattr)
    assert len(grads) == 1, "one optimizer step, one accumulation boundary"
    return grads[0], session.reports[-1]


def _two_ranks(zoo, root, zero_stage: int, checkpointing: bool = False) -> dict:
    spawn_ranks(rank_step_main, 2,
                (str(zoo.llm.parent), str(root), 2, zero_stage, checkpointing), TIMEOUT_S)
    grads = torch.load(root / "grads.pt", weights_only=True)
    assert len(grads) == 1
    return grads[0]


def _mismatches(a: dict, b: dict) -> list[str]:
    """What differs between two steps' gradients: parameters with an element off by more than
    ATOL or a relative norm ||a - b|| / ||b|| over PARAM_RTOL, and the whole gradient's relative
    norm over WHOLE_RTOL."""
    assert a.keys() == b.keys() and a
    bad = []
    for name in a:
        diff = a[name] - b[name]
        worst = float(diff.abs().max())
        rel = float(torch.linalg.vector_norm(diff))
        rel /= max(float(torch.linalg.vector_norm(b[name])), 1e-12)
        if worst > ATOL or rel > PARAM_RTOL:
            bad.append(f"{name}: max |diff| = {worst:.3g}, ||diff|| / ||grad|| = {rel:.3g}")
    whole_a = torch.cat([a[n].flatten() for n in a])
    whole_b = torch.cat([b[n].flatten() for n in a])
    whole = float(torch.linalg.vector_norm(whole_a - whole_b) / torch.linalg.vector_norm(whole_b))
    if whole > WHOLE_RTOL:
        bad.append(f"whole step: ||diff|| / ||grad|| = {whole:.3g}")
    return bad


@pytest.fixture(scope="module")
def layout_a(tiny_zoo, tmp_path_factory):
    with pytest.MonkeyPatch.context() as m:
        return _in_process(tiny_zoo, tmp_path_factory.mktemp("a"), m, micro=8)


def test_accumulation_layout_gives_the_same_gradients(tiny_zoo, tmp_path, monkeypatch, layout_a):
    grads, _ = _in_process(tiny_zoo, tmp_path, monkeypatch, micro=2)
    bad = _mismatches(grads, layout_a[0])
    assert not bad


def test_micro_batch_normalization_gives_different_gradients(tiny_zoo, tmp_path, monkeypatch,
                                                             layout_a):
    grads, _ = _in_process(tiny_zoo, tmp_path, monkeypatch, micro=2, normalization="micro_batch")
    bad = _mismatches(grads, layout_a[0])
    # The reference's per-micro-batch means weigh samples unevenly: most parameters differ.
    assert len(bad) > len(grads) // 2, "micro_batch normalisation matched step normalisation"


@pytest.mark.parametrize(("zero", "checkpointing"), [(2, True), (3, False)])
def test_zero_stages_and_checkpointing_give_the_same_gradients(
    tiny_zoo, tmp_path, monkeypatch, layout_a, zero, checkpointing
):
    grads, _ = _in_process(tiny_zoo, tmp_path, monkeypatch, micro=2, zero_stage=zero,
                           checkpointing=checkpointing)
    assert not _mismatches(grads, layout_a[0])


@pytest.mark.parametrize(("zero", "checkpointing"), [(0, False), (3, True)])
def test_two_ranks_give_the_same_gradients(tiny_zoo, tmp_path, layout_a, zero, checkpointing):
    grads = _two_ranks(tiny_zoo, tmp_path, zero, checkpointing)
    assert not _mismatches(grads, layout_a[0])


def _independent_means(zoo, monkeypatch) -> tuple[float, float]:
    """Token-weighted LM and image-weighted diffusion means over the 8 samples, one at a time,
    from the stage's starting model (what the step's forward sees)."""
    make_diffusion_deterministic(monkeypatch.setattr)
    stage = step_stage(zoo, 1, 2)
    torch.manual_seed(stage.seed)
    model = build_stage_model(stage)
    lm_sum = lm_count = vm_sum = vm_count = 0.0
    with torch.no_grad():
        for row in step_rows(model):
            batch = collate_rows(model, [row])
            embeds = model.embed(batch["input_ids"], batch["clip_pixel_values"], every_tower=True)
            logits = model.run_llm(embeds, batch["attention_mask"])[0].logits[0, :-1]
            targets = batch["labels"][0, 1:]
            keep = targets != -100
            lm_sum += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            lm_count += int(keep.sum())
            out = model(**batch, lm_weight=1.0, vm_weight=1.0)
            vm_sum += float(out.vm_loss) * out.num_dreams
            vm_count += out.num_dreams
    return lm_sum / lm_count, vm_sum / vm_count


def test_logged_losses_are_the_step_weighted_means(tiny_zoo, tmp_path, monkeypatch):
    _, report = _in_process(tiny_zoo, tmp_path, monkeypatch, micro=2)
    lm, vm = _independent_means(tiny_zoo, monkeypatch)
    assert report["lm_loss"] == pytest.approx(lm, rel=1e-5)
    assert report["vm_loss"] == pytest.approx(vm, rel=1e-5)
    stage = step_stage(tiny_zoo, 1, 2)
    assert report["loss"] == pytest.approx(stage.loss.lm * lm + stage.loss.vm * vm, rel=1e-5)
    assert report["samples_global"] == NUM_SAMPLES


def test_a_step_without_lm_tokens_logs_no_lm_loss(tiny_zoo, tmp_path, monkeypatch):
    import step_grads

    # Only the two creation-only samples: a step with dream images and no supervised token.
    monkeypatch.setattr(step_grads, "SAMPLE_LAYOUT", step_grads.SAMPLE_LAYOUT[6:] * 4)
    _, report = _in_process(tiny_zoo, tmp_path, monkeypatch, micro=2)
    assert "lm_loss" not in report and report["vm_loss"] > 0
