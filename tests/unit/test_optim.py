"""AdamW decay groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dreamray.config.specs import OptimSpec
from dreamray.train.optim import (
    build_optimizer,
    build_scheduler,
    lr_factor,
    no_decay_names,
    param_groups,
    warmup_steps,
)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = RMSNorm(4)
        self.ln = nn.LayerNorm(4)
        self.queries = nn.Parameter(torch.zeros(1, 2, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_no_decay_names():
    assert no_decay_names(Toy()) == {
        "proj.bias", "norm.weight", "ln.weight", "ln.bias", "frozen.bias"
    }


def test_param_groups_only_trainable():
    model = Toy()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model.proj.weight, model.queries])
    assert ids(no_decay["params"]) == ids(
        [model.proj.bias, model.norm.weight, model.ln.weight, model.ln.bias]
    )


def test_param_groups_empty_group_dropped_and_nothing_raises():
    model = Toy()
    model.requires_grad_(False)
    model.queries.requires_grad_(True)
    groups = param_groups(model, weight_decay=0.0)
    assert len(groups) == 1 and groups[0]["params"][0] is model.queries
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to optimize"):
        param_groups(model, weight_decay=0.0)


def test_schedule_shape():
    total, warm = 100, warmup_steps(100, 0.1)
    assert warm == 10
    factors = [lr_factor(s, total, 0.1, 0.1) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1)  # first step is not wasted at lr 0
    assert factors[warm - 1] == pytest.approx(1.0)
    assert factors[warm] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warm:], factors[warm + 1 :], strict=False))
    assert factors[total] == pytest.approx(0.1)
    mid = warm + (total - warm) // 2
    assert factors[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_schedule_without_warmup_and_tiny_stage():
    assert lr_factor(0, 4, 0.0, 0.0) == pytest.approx(1.0)
    assert warmup_steps(4, 0.003) == 1  # ceil: a tiny stage still warms up one step
    assert lr_factor(0, 1, 0.003, 0.0) == pytest.approx(1.0)


def test_optimizer_and_scheduler_step_together():
    model = Toy()
    spec = OptimSpec(lr=1.0e-2, warmup_ratio=0.5, betas=(0.8, 0.9), eps=1.0e-6)
    opt = build_optimizer(model, spec)
    sched = build_scheduler(opt, spec, total_steps=4)
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1.0e-6
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([5.0e-3, 1.0e-2])
    assert lrs[3] < lrs[2] == lrs[1]
    state = sched.state_dict()
    fresh = build_scheduler(build_optimizer(Toy(), spec), spec, total_steps=4)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == sched.get_last_lr()
