"""Trainable groups: exact partition, per-stage freezing, one optimizer step moves only them."""

from __future__ import annotations

import hashlib

import pytest
import torch
from model_fixtures import built_model, make_batch

from dreamray.model.groups import (
    GROUP_NAMES,
    GroupError,
    count_parameters_by_group,
    freeze_all_but,
    parameters_by_group,
)

STAGES = {
    "stage1_creation": (["dream_queries", "condition_projector"], (0.0, 1.0)),
    "stage1_comprehension": (["vision_projector"], (1.0, 0.0)),
    "stage2": (
        [
            "llm",
            "embed_tokens",
            "lm_head",
            "vision_projector",
            "dream_queries",
            "condition_projector",
        ],
        (1.0, 10.0),
    ),
}


def _checksums(model) -> dict[str, str]:
    return {
        n: hashlib.sha256(p.detach().numpy().tobytes()).hexdigest()
        for n, p in model.named_parameters()
    }


def test_groups_partition_the_parameters(tiny_zoo):
    model = built_model(tiny_zoo)
    by_group = parameters_by_group(model)
    names = [n for ps in by_group.values() for n, _ in ps]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    counts = count_parameters_by_group(model)
    assert set(counts) == set(GROUP_NAMES) and all(counts.values())
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert [n for n, _ in by_group["embed_tokens"]] == ["llm.model.embed_tokens.weight"]
    assert [n for n, _ in by_group["lm_head"]] == ["llm.lm_head.weight"]
    assert {n.split(".")[2] for n, _ in by_group["llm"]} == {"layers", "norm"}


def test_towers_are_frozen_after_build(tiny_zoo):
    model = built_model(tiny_zoo)
    by_group = parameters_by_group(model)
    for group in ("vision_encoder", "unet", "vae"):
        assert not any(p.requires_grad for _, p in by_group[group]), group
    model.train()
    assert not any(t.training for t in model.frozen_towers())


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_one_step_moves_exactly_the_trainable_groups(tiny_zoo, stage):
    groups, (w_lm, w_vm) = STAGES[stage]
    model = built_model(tiny_zoo)
    freeze_all_but(model, groups)
    trainable = {n for g in groups for n, _ in parameters_by_group(model)[g]}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    for kind in ("no_images", "no_dreams"):
        model(**make_batch(model, kind), lm_weight=w_lm, vm_weight=w_vm).loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable), kind
        model.zero_grad(set_to_none=True)
    before = _checksums(model)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    model(**make_batch(model, "mixed"), lm_weight=w_lm, vm_weight=w_vm).loss.backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
        else:
            assert param.grad is None, name
    optim.step()
    after = _checksums(model)
    assert {n for n in before if before[n] != after[n]} == trainable


def test_group_errors(tiny_zoo):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = built_model(tiny_zoo)
    with pytest.raises(GroupError, match="unknown groups \\['projector'\\]"):
        freeze_all_but(model, ["projector"])

    class TiedOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            cfg = LlamaConfig(
                vocab_size=16,
                hidden_size=8,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                tie_word_embeddings=True,
            )
            self.llm = LlamaForCausalLM(cfg)

    with pytest.raises(GroupError, match="\\['lm_head'\\] have no parameters"):
        freeze_all_but(TiedOnly(), ["lm_head"])
