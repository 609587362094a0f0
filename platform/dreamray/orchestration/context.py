"""What a stage executor is given and what it returns (pure dataclasses, no Ray).

An executor is a plain function `(stage_spec, StageContext) -> StageOutcome`. The runner calls
it inside a Ray task; the train executor wraps `launcher.run_train_stage`, the merge executor
is `merge.run_merge_stage`, and tests may inject their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dreamray.config.specs import AnyStageSpec


@dataclass(frozen=True)
class StageContext:
    """Where one stage identity reads and writes.

    Attributes:
        name: the stage name.
        identity: the stage identity (spec + inputs).
        spec_hash: the hash of the stage's spec alone.
        artifact_dir: the local directory the stage's artifact must end up in (atomically).
        train_storage: Ray Train `storage_path` of the run (local path or URI).
        train_run_name: Ray Train run name; the same name resumes from the latest checkpoint.
        inputs: stage name -> local artifact directory, for every stage it needs.
        input_digests: stage name -> artifact digest of that input.
        trials_at_once: a swept stage's trials at once, as the runner reserved them; None
            (a stage run outside the runner) decides from the free resources.
    """

    name: str
    identity: str
    spec_hash: str
    artifact_dir: str
    train_storage: str
    train_run_name: str
    inputs: dict[str, str] = field(default_factory=dict)
    input_digests: dict[str, str] = field(default_factory=dict)
    trials_at_once: int | None = None


@dataclass
class StageOutcome:
    """What a finished stage reports back to the runner (and the ledger).

    Attributes:
        artifact_dir: where the artifact ended up (with its stage.json).
        steps: optimizer steps done (0 for merge).
        samples: samples seen.
        metrics: final metrics (losses, eval scores).
        checkpoint: the last Ray Train checkpoint, if any.
        skipped: counts of skipped samples by reason.
        started_at: epoch seconds when the stage's work began.
        ended_at: epoch seconds when it ended.
        node_id: the Ray node the stage task ran on.
        history: optional per-step metrics, `[{"step": int, name: value, ...}]`, for plots.
        events: ``(event, detail)`` pairs for the stage's ledger record (e.g. a damaged
            checkpoint passed over on resume).
    """

    artifact_dir: str
    steps: int = 0
    samples: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float = 0.0
    node_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)


Executor = Callable[[AnyStageSpec, StageContext], StageOutcome]


def error_line(err: BaseException) -> str:
    """`<ExceptionType>: <message>`, with the notes the error gathered on its way up (e.g. which
    artifact was being written), as the ledger's one line."""
    notes = "; ".join(getattr(err, "__notes__", ()))
    return f"{type(err).__name__}: {err}" + (f" ({notes})" if notes else "")


class StageError(RuntimeError):
    """A stage that raised: a one-line message for the ledger, the traceback for the logs."""

    def __init__(self, message: str, details: str = ""):
        """Args:
        message: `<ExceptionType>: <message>` of the original error.
        details: its (remote) traceback.
        """
        super().__init__(message)
        self.details = details
