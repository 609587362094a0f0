"""The stage ledger: one JSON record per stage, stored with the run, and the skip/resume rule.

Run directory layout (paths relative to the run directory, which is a local path or a
pyarrow.fs URI):

    run.json                       ledger version, recipe name, creation time
    ledger/<stage>.json            the stage's `StageRecord`
    artifacts/<stage>-<id12>/      the stage's output (files + stage.json)
    train/<stage>-<id12>/          Ray Train storage of the stage (checkpoints); run name = dir
    tensorboard/, plots/, report.md

A record is trusted only while its identity matches the current spec, its inputs' artifact
digests match the ones it was made from, and its artifact passes `verify_artifact`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import dreamray
from dreamray.orchestration.identity import stage_key
from dreamray.orchestration.manifest import verify_artifact
from dreamray.orchestration.storage import RunStorage, StorageError

LEDGER_VERSION = 1
RUN_JSON = "run.json"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint directory names

Status = Literal["running", "done", "failed"]
Action = Literal["skip", "resume", "run"]


class LedgerVersionError(RuntimeError):
    """A run directory written by a ledger version this code cannot read."""


class StageRecord(BaseModel):
    """What the ledger knows about one stage of a run."""

    model_config = ConfigDict(extra="forbid")

    ledger_version: int = LEDGER_VERSION
    stage: str
    kind: str
    identity: str
    status: Status
    inputs: dict[str, str] = Field(default_factory=dict, description="stage -> identity")
    input_digests: dict[str, str] = Field(default_factory=dict, description="stage -> digest")
    artifact: str | None = None
    artifact_digest: str | None = None
    train_storage: str | None = None
    train_run_name: str | None = None
    checkpoint: str | None = None
    steps: int | None = None
    samples: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    node_id: str | None = None
    attempts: int = 0
    error: str | None = None
    git_commit: str | None = None
    dreamray_version: str = dreamray.__version__
    events: list[dict[str, Any]] = Field(default_factory=list)

    def log(self, event: str, detail: str = "") -> None:
        """Append a timestamped event (skip, resume, corrupt, fail, ...) to the record."""
        self.events.append({"at": time.time(), "event": event, "detail": detail})


class Decision(BaseModel):
    """What the runner does with a ready stage, and why."""

    action: Action
    reason: str
    corrupt: list[str] = Field(default_factory=list)
    # Checkpoints made from other input artifacts must not be resumed from.
    clear_checkpoints: bool = False


def artifact_rel(name: str, identity: str) -> str:
    """Run-relative artifact directory of a stage identity."""
    return f"artifacts/{stage_key(name, identity)}"


def train_rel(name: str, identity: str) -> str:
    """Run-relative Ray Train run directory of a stage identity (storage `train/`)."""
    return f"train/{stage_key(name, identity)}"


class Ledger:
    """The records of one run directory."""

    def __init__(self, storage: RunStorage):
        """Wrap a run storage; use `Ledger.open` to also check or create `run.json`."""
        self.storage = storage

    @classmethod
    def open(cls, storage: RunStorage, recipe_name: str) -> Ledger:
        """Open a run directory, creating `run.json` on first use.

        Args:
            storage: the run storage.
            recipe_name: the recipe's name, recorded on creation.

        Returns:
            The ledger.

        Raises:
            LedgerVersionError: if the directory was written by another ledger version.
        """
        ledger = cls(storage)
        if storage.exists(RUN_JSON):
            ledger.check_version(storage.read_json(RUN_JSON), storage.uri_of(RUN_JSON))
        else:
            storage.write_json(RUN_JSON, {"ledger_version": LEDGER_VERSION,
                                          "recipe": recipe_name, "created_at": time.time(),
                                          "dreamray_version": dreamray.__version__})
        return ledger

    @staticmethod
    def check_version(data: Any, where: str) -> None:
        """Raise `LedgerVersionError` unless `data` carries this ledger's version."""
        found = data.get("ledger_version") if isinstance(data, Mapping) else None
        if found != LEDGER_VERSION:
            raise LedgerVersionError(
                f"{where}: written by ledger version {found!r}; this dreamray "
                f"({dreamray.__version__}) reads version {LEDGER_VERSION}. Use a new --run-dir "
                f"(or the dreamray version that wrote this one)."
            )

    def read(self, name: str) -> StageRecord | None:
        """The stage's record, or None if it never started.

        Raises:
            LedgerVersionError: if the record was written by another ledger version.
            StorageError: if the record is unreadable.
        """
        rel = f"ledger/{name}.json"
        if not self.storage.exists(rel):
            return None
        data = self.storage.read_json(rel)
        self.check_version(data, self.storage.uri_of(rel))
        try:
            return StageRecord.model_validate(data)
        except ValidationError as err:
            raise StorageError(f"{self.storage.uri_of(rel)}: not a stage record: {err}") from err

    def write(self, record: StageRecord) -> None:
        """Store a record (atomically replaces the previous one)."""
        self.storage.write_json(f"ledger/{record.stage}.json", record.model_dump(mode="json"))

    def latest_checkpoint(self, name: str, identity: str) -> str | None:
        """URI of the newest Ray Train checkpoint of a stage identity, if any."""
        rel = train_rel(name, identity)
        found = [n for n in self.storage.list_dir(rel) if n.startswith(CHECKPOINT_PREFIX)]
        return self.storage.uri_of(f"{rel}/{max(found)}") if found else None

    def decide(self, name: str, identity: str, input_digests: Mapping[str, str]) -> Decision:
        """Skip, resume or run a stage whose inputs are all complete.

        Args:
            name: the stage.
            identity: its current identity.
            input_digests: the current artifact digest of each stage it needs.

        Returns:
            The decision; `corrupt` lists the bad files when a finished artifact failed checks.
        """
        record = self.read(name)
        if record is None:
            return Decision(action="run", reason="no record")
        if record.identity != identity:
            return Decision(action="run", reason=f"spec or inputs changed "
                            f"({record.identity[:12]} -> {identity[:12]})")
        if dict(record.input_digests) != dict(input_digests):
            return Decision(action="run", reason="an input artifact was re-made",
                            clear_checkpoints=True)
        if record.status == "done":
            return self._decide_done(record)
        if self.latest_checkpoint(name, identity):
            return Decision(action="resume", reason=f"{record.status} with a checkpoint")
        return Decision(action="run", reason=f"{record.status} without a checkpoint")

    def _decide_done(self, record: StageRecord) -> Decision:
        rel = artifact_rel(record.stage, record.identity)
        digest, problems = verify_artifact(self.storage, rel)
        if problems:
            return Decision(action="run", reason="artifact failed verification",
                            corrupt=problems)
        if digest != record.artifact_digest:
            return Decision(action="run", reason="artifact differs from the ledger's record",
                            corrupt=["artifact digest differs from the ledger"])
        return Decision(action="skip", reason="done and verified")
