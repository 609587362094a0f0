"""Two ranks in two processes of this machine (gloo, no Ray) whose batches differ in kind:
rank 0 has IMG and DRM blocks, rank 1 only IMG blocks (no creation sample). ZeRO-0 averages
gradients in a fixed order after backward and is the reference; ZeRO-2 (gradient buckets filled
in backward order) and ZeRO-3 (parameters gathered when their module runs) must match it.

This is what `DreamLLM.forward` running every module once, in one order, whatever the batch
holds, is for (see test_model_forward's one-order test for the same property in one process):
when it did not, ZeRO-2 summed mismatched bucket slices (silently wrong gradients) and ZeRO-3
paired mismatched all-gathers (gloo size error or hang).
"""

from __future__ import annotations

import json

import pytest
from train_helpers import rank_main, spawn_ranks  # spawned ranks inherit sys.path

TIMEOUT_S = 300
KINDS = ["mixed", "no_dreams"]


def run_two_ranks(zoo, root, zero_stage: int) -> list[dict]:
    spawn_ranks(rank_main, 2, (str(zoo.llm.parent), str(root), KINDS, zero_stage, 3), TIMEOUT_S)
    return [json.loads(line) for line in (root / "reports.rank0.jsonl").read_text().split("\n")
            if line]


@pytest.fixture(scope="module")
def reference(tiny_zoo, tmp_path_factory):
    return run_two_ranks(tiny_zoo, tmp_path_factory.mktemp("zero0"), 0)


def _same(a, b):
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    assert [r["grad_norm"] for r in a] == pytest.approx([r["grad_norm"] for r in b], rel=1e-4)


def test_reference_runs(reference):
    assert reference[-1]["step"] == 3 and reference[-1]["samples_global"] == 12


def test_zero2_matches_zero0(tiny_zoo, tmp_path, reference):
    _same(run_two_ranks(tiny_zoo, tmp_path, 2), reference)


def test_zero3_matches_zero0_without_hanging(tiny_zoo, tmp_path, reference):
    _same(run_two_ranks(tiny_zoo, tmp_path, 3), reference)
