"""What a stage asks the cluster for, and whether the cluster can give it (pure, no Ray).

A train stage is one gang: `num_workers` bundles of `{CPU, GPU}` that Ray Train places as one
placement group (the Train V2 controller itself takes 0 CPUs), plus the CPUs of its Ray Data map
actors (`data.map_workers_per_rank` per worker), which run outside the placement group: a stage
whose gang is granted but whose data finds no free CPU waits forever (two 1-CPU gangs on a 2-CPU
cluster did exactly that).
Merge stages run inside the stage task (0 CPUs). The runner starts a stage only when the whole
demand fits beside the stages it already started, so two of its own stages never wait on each
other half-granted, and it fails a stage at once when no placement of it on the cluster's nodes
could ever exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from dreamray.config.specs import AnyStageSpec, MergeStageSpec, TrainStageSpec
from dreamray.data.pipeline import MAP_ACTOR_CPUS

Bundle = dict[str, float]
_EPS = 1e-9  # resources are floats (fractional GPUs): compare with a tolerance


def stage_bundles(stage: AnyStageSpec) -> list[Bundle]:
    """The bundles of one stage's gang.

    Args:
        stage: a train, merge or eval stage spec.

    Returns:
        One bundle per worker; empty for a stage that needs no workers.
    """
    if isinstance(stage, MergeStageSpec):
        return []
    return [stage.scaling.worker_resources() for _ in range(stage.scaling.num_workers)]


def data_bundles(stage: AnyStageSpec) -> list[Bundle]:
    """What the stage's Ray Data map actors hold while it runs: one bundle per actor.

    Args:
        stage: a train, merge or eval stage spec.

    Returns:
        `stage.map_actors` bundles of `{CPU: MAP_ACTOR_CPUS}` for a train stage; empty for
        the others.
    """
    if not isinstance(stage, TrainStageSpec):
        return []
    return [{"CPU": MAP_ACTOR_CPUS} for _ in range(stage.map_actors)]


def stage_demand(stage: AnyStageSpec) -> list[Bundle]:
    """Everything the stage holds while it runs: its gang's bundles and its data bundles.

    Args:
        stage: a train, merge or eval stage spec.

    Returns:
        The bundles to pack on the cluster's nodes (the data bundles may land on any node).
    """
    return stage_bundles(stage) + data_bundles(stage)


def total(bundles: Iterable[Mapping[str, float]]) -> Bundle:
    """Sum of bundles, key by key."""
    out: Bundle = {}
    for bundle in bundles:
        for key, value in bundle.items():
            out[key] = out.get(key, 0.0) + value
    return out


def copies_that_fit(demand: Mapping[str, float], available: Mapping[str, float]) -> int:
    """How many whole copies of a demand the available resources hold (in total, not per
    node: a sweep's trials are placed by Ray, this only bounds how many ask at once).

    Args:
        demand: one copy's total (e.g. a trial's gang plus its data actors).
        available: free resources.

    Returns:
        The largest n with n x demand <= available for every resource the demand names; 0
        when one is missing, and a large number for an empty demand.
    """
    counts = [math.floor((available.get(k, 0.0) + _EPS) / v) for k, v in demand.items() if v > 0]
    return min(counts) if counts else 1 << 30


def trial_concurrency(stage: TrainStageSpec, available: Mapping[str, float]) -> int:
    """How many trials of a swept stage run at once: as many whole trial demands (gang + data
    actors) as the free resources hold, at least 1, at most `num_samples` or the sweep's
    `max_concurrent`.

    Args:
        stage: the swept stage.
        available: the resources free for it (the runner: what its own running stages and
            other jobs leave; a stage run on its own: `ray.available_resources()`).

    Returns:
        Tune's trials at once.
    """
    assert stage.sweep is not None
    cap = min(stage.sweep.num_samples, stage.sweep.max_concurrent or stage.sweep.num_samples)
    return max(1, min(cap, copies_that_fit(total(stage_demand(stage)), available)))


def reservation(stage: AnyStageSpec, free: Mapping[str, float]) -> tuple[Bundle, int | None]:
    """What the runner holds for a stage it starts: its demand, or a sweep's trials at once
    times one trial's demand.

    Args:
        stage: the stage starting.
        free: what is free for it now (see `free_beside`).

    Returns:
        (the reserved total, the trials at once for a sweep, else None).
    """
    demand = total(stage_demand(stage))
    if not isinstance(stage, TrainStageSpec) or stage.sweep is None:
        return demand, None
    trials = trial_concurrency(stage, free)
    return {k: v * trials for k, v in demand.items()}, trials


def free_beside(cluster_total: Mapping[str, float], reserved: Mapping[str, float],
                available: Mapping[str, float]) -> Bundle:
    """What a new stage may take: the cluster less the runner's reservations, and no more than
    is free now (other jobs), key by key.

    Args:
        cluster_total: `ray.cluster_resources()`.
        reserved: totals of the runner's running stages.
        available: `ray.available_resources()`.

    Returns:
        The free resources.
    """
    own_room = subtract(cluster_total, reserved)
    return {k: min(v, available.get(k, 0.0)) for k, v in own_room.items()}


def subtract(a: Mapping[str, float], b: Mapping[str, float]) -> Bundle:
    """`a - b` key by key (keys of `a` only)."""
    return {k: v - b.get(k, 0.0) for k, v in a.items()}


def covers(have: Mapping[str, float], need: Mapping[str, float]) -> bool:
    """Whether `have` holds at least `need` of every resource `need` names."""
    return all(have.get(k, 0.0) + _EPS >= v for k, v in need.items() if v > 0)


def describe(resources: Mapping[str, float]) -> str:
    """`{CPU: 4, GPU: 1}`-style text, keys sorted, Ray's internal keys left out."""
    shown = {k: v for k, v in sorted(resources.items())
             if not k.startswith(("node:", "memory", "object_store_memory", "accelerator_type"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


def pack(bundles: Sequence[Mapping[str, float]], nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether the bundles can be placed on the nodes (first-fit decreasing).

    First-fit decreasing is a heuristic, so a True is exact and a False may in rare cases be
    pessimistic; for the uniform bundles of a Ray Train gang it is exact.

    Args:
        bundles: the gang.
        nodes: free (or total) resources of each node.

    Returns:
        True if every bundle found a node.
    """
    free = [dict(n) for n in nodes]
    keys = sorted({k for b in bundles for k in b})
    order = sorted(bundles, key=lambda b: tuple(-b.get(k, 0.0) for k in keys))
    for bundle in order:
        node = next((n for n in free if covers(n, bundle)), None)
        if node is None:
            return False
        for key, value in bundle.items():
            node[key] = node.get(key, 0.0) - value
    return True


def never_fits(bundles: Sequence[Mapping[str, float]],
               node_totals: Sequence[Mapping[str, float]],
               data: Sequence[Mapping[str, float]] = ()) -> str | None:
    """Why a gang (and its data actors) can never be placed on the cluster, or None if it can.

    Args:
        bundles: the gang.
        node_totals: total resources of each alive node.
        data: the bundles of the stage's data actors, besides the gang (`data_bundles`).

    Returns:
        A message naming what was asked for and what the cluster has, or None.
    """
    if not (bundles or data) or pack(list(bundles) + list(data), node_totals):
        return None
    cluster = total(node_totals)
    nodes = ", ".join(describe(n) for n in node_totals) or "no alive nodes"
    ask = (f"{len(bundles)} x {describe(bundles[0])} = {describe(total(bundles))}"
           if bundles else "no workers")
    if data:
        ask += f" plus {describe(total(data))} for its {len(data)} data map actor(s)"
    return (f"asks for {ask}; "
            f"the cluster has {describe(cluster)} on {len(node_totals)} node(s): {nodes}")


def fits_now(demand: Mapping[str, float], cluster_total: Mapping[str, float],
             reserved: Mapping[str, float], available: Mapping[str, float]) -> bool:
    """Whether a gang can be started now without waiting on a gang the runner started.

    Args:
        demand: the gang's total.
        cluster_total: `ray.cluster_resources()`.
        reserved: totals of the runner's gangs still running (granted or not yet).
        available: `ray.available_resources()` (what other jobs left free).

    Returns:
        True if the demand fits both beside the runner's own gangs and in what is free now.
    """
    own_room = subtract(cluster_total, reserved)
    return covers(own_room, demand) and covers(available, demand)
