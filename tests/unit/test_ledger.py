"""Identities, run storage (local path, file://, mock://), manifests, ledger decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_toys import write_plugin_artifact

from dreamray.config import load_recipe
from dreamray.contracts import TRAIN_KIND
from dreamray.orchestration.identity import stage_identities, stage_key
from dreamray.orchestration.ledger import (
    LEDGER_VERSION,
    Ledger,
    LedgerVersionError,
    StageRecord,
    artifact_rel,
    train_rel,
)
from dreamray.orchestration.manifest import (
    ManifestRecord,
    build_manifest,
    verify_artifact,
    write_manifest,
)
from dreamray.orchestration.storage import RunStorage

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pipelines" / "recipes" / "tiny.yaml"


def _ids(**overrides):
    return stage_identities(load_recipe(TINY, {"root": "/x", **overrides}, check_paths=False))


def test_identity_changes_only_downstream_of_an_edit():
    base = _ids()
    sft_lr = _ids(**{"stages.sft.optim.lr": 5.0e-4})
    assert [n for n in base if base[n] != sft_lr[n]] == ["sft", "coco_fid", "textvqa"]
    creation = _ids(**{"stages.stage1_creation.optim.lr": 1.0e-3})
    assert [n for n in base if base[n] != creation[n]] == [
        "stage1_creation", "merge", "stage2", "sft", "coco_fid", "textvqa"]
    assert _ids() == base  # deterministic


@pytest.mark.parametrize("scheme", ["path", "file", "mock"])
def test_storage_round_trip(tmp_path, scheme):
    uri = {"path": str(tmp_path / "run"), "file": f"file://{tmp_path}/run",
           "mock": "mock:///run"}[scheme]
    storage = RunStorage(uri)
    storage.write_json("ledger/a.json", {"x": 1})
    storage.write_bytes("artifacts/a/f.bin", b"abc")
    assert storage.read_json("ledger/a.json") == {"x": 1}
    assert storage.list_files("artifacts") == ["a/f.bin"]
    assert storage.list_dir("ledger") == ["a.json"]  # no temp files left behind
    assert storage.sha256("artifacts/a/f.bin").startswith("ba7816bf")
    storage.delete_dir("artifacts/a")
    assert not storage.exists("artifacts/a/f.bin")
    assert storage.is_local == (scheme != "mock")


def _done_stage(storage: RunStorage, name: str, identity: str) -> StageRecord:
    rel = artifact_rel(name, identity)
    directory = storage.local_path(rel)
    write_plugin_artifact(directory, seed=1)
    manifest = build_manifest(directory, ManifestRecord(stage=name, kind=TRAIN_KIND))
    write_manifest(directory, manifest)
    digest, problems = verify_artifact(storage, rel)
    assert problems == []
    record = StageRecord(stage=name, kind="train", identity=identity, status="done",
                         artifact_digest=digest)
    Ledger(storage).write(record)
    return record


def test_ledger_decisions(tmp_path):
    storage = RunStorage(str(tmp_path))
    ledger = Ledger.open(storage, "tiny")
    assert ledger.decide("a", "1" * 64, {}).action == "run"
    _done_stage(storage, "a", "1" * 64)
    assert ledger.decide("a", "1" * 64, {}).action == "skip"
    assert ledger.decide("a", "2" * 64, {}).action == "run"  # edited spec
    changed = ledger.decide("a", "1" * 64, {"up": "d" * 64})
    assert changed.action == "run" and changed.clear_checkpoints
    # A flipped byte in a done artifact: re-run, and say which file.
    path = storage.local_path(artifact_rel("a", "1" * 64)) / "dream_embedding.bin"
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    decision = ledger.decide("a", "1" * 64, {})
    assert decision.action == "run" and "dream_embedding.bin: sha256 mismatch" in \
        decision.corrupt[0]


def test_interrupted_stage_resumes_only_with_a_checkpoint(tmp_path):
    storage = RunStorage(f"file://{tmp_path}")
    ledger = Ledger.open(storage, "tiny")
    ledger.write(StageRecord(stage="b", kind="train", identity="3" * 64, status="running"))
    assert ledger.decide("b", "3" * 64, {}).action == "run"
    (tmp_path / train_rel("b", "3" * 64) / "checkpoint_000002").mkdir(parents=True)
    decision = ledger.decide("b", "3" * 64, {})
    assert decision.action == "resume"
    assert ledger.latest_checkpoint("b", "3" * 64).endswith(
        f"train/{stage_key('b', '3' * 64)}/checkpoint_000002")


def test_incompatible_run_dir_is_a_clear_error(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"ledger_version": LEDGER_VERSION + 1}))
    with pytest.raises(LedgerVersionError, match="written by ledger version 2.*new --run-dir"):
        Ledger.open(RunStorage(str(tmp_path)), "tiny")


def test_ledger_on_mock_filesystem_round_trips_records():
    storage = RunStorage("mock:///elsewhere")
    ledger = Ledger.open(storage, "tiny")
    record = StageRecord(stage="c", kind="merge", identity="4" * 64, status="failed",
                         error="boom")
    record.log("failed", "boom")
    ledger.write(record)
    assert Ledger.open(storage, "tiny").read("c") == record
