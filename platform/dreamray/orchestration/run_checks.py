"""The runner's checks before anything starts: inputs from outside the run, the recipe's use
of merges and executors, and whether every stage could ever be scheduled. Each returns one line
per problem, so that a run reports them all at once (`PreflightError`)."""

from __future__ import annotations

from collections.abc import Mapping

from dreamray.config import RecipeSpec, TrainStageSpec
from dreamray.contracts import MERGE_KIND, StageRef
from dreamray.orchestration.backends import ClusterSnapshot
from dreamray.orchestration.dag import DagState
from dreamray.orchestration.ledger import Ledger, artifact_rel
from dreamray.orchestration.manifest import verify_artifact
from dreamray.orchestration.resources import data_bundles, never_fits, stage_bundles
from dreamray.orchestration.storage import RunStorage


def external_input_problems(recipe: RecipeSpec, dag: DagState, ledger: Ledger,
                            ids: Mapping[str, str], storage: RunStorage,
                            ) -> tuple[list[str], dict[str, str]]:
    """Stages outside the run's targets that a target needs: finished, same spec, intact.

    Args:
        recipe: the recipe.
        dag: the run's stage states (`external` = not a target).
        ledger: the run's ledger.
        ids: stage identities.
        storage: the run storage.

    Returns:
        ``(problems, digests)``: the artifact digests of the intact external inputs.
    """
    problems, digests = [], {}
    for name in (n for n, s in dag.state.items() if s == "external"):
        if not any(name in recipe.stages[t].needs for t in dag.targets()):
            continue
        record = ledger.read(name)
        if record is None or record.status != "done":
            problems.append(f"stage {name!r} has no finished artifact in {storage.uri}: "
                            "run it first")
        elif record.identity != ids[name]:
            problems.append(f"stage {name!r} in {storage.uri} was made from another spec "
                            f"({record.identity[:12]}, now {ids[name][:12]}): run it again first")
        else:
            digest, bad = verify_artifact(storage, artifact_rel(name, record.identity))
            if bad:
                problems.append(f"stage {name!r}: artifact corrupted ({'; '.join(bad)}): "
                                "run it again first")
            digests[name] = digest or ""
    return problems, digests


def recipe_problems(recipe: RecipeSpec, dag: DagState, executors: Mapping) -> list[str]:
    """A train stage initialised from a merge's LLM (it has none); a kind with no executor."""
    problems = []
    merges = {n for n, s in recipe.stages.items() if s.kind == MERGE_KIND}
    for name in dag.targets():
        stage = recipe.stages[name]
        llm_ref = StageRef.parse(stage.init.llm) if isinstance(stage, TrainStageSpec) else None
        if llm_ref is not None and llm_ref.name in merges:
            problems.append(f"stages.{name}.init.llm: a merge artifact carries no LLM "
                            "weights (only plugins, config and tokenizer); use base")
        if stage.kind not in executors:
            problems.append(f"stages.{name}: no executor for {stage.kind} stages")
    return problems


def resource_problems(recipe: RecipeSpec, dag: DagState, ledger: Ledger,
                      ids: Mapping[str, str], snapshot: ClusterSnapshot) -> list[str]:
    """Stages that no placement on the cluster's nodes could ever hold (finished ones, which
    will be skipped, need nothing)."""
    problems = []
    for name in dag.targets():
        record = ledger.read(name)
        if record and record.status == "done" and record.identity == ids[name]:
            continue
        stage = recipe.stages[name]
        why = never_fits(stage_bundles(stage), snapshot.nodes, data_bundles(stage))
        if why:
            problems.append(f"stages.{name}: can never be scheduled: {why}")
    return problems
