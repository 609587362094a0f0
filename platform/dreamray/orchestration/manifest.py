"""`stage.json`: the manifest of a stage's artifact directory, and its verification.

The manifest names the stage, its spec hash and identity, the digests of its inputs, what it
did (steps, samples, metrics) and the sha256 of every other file of the directory. An artifact
is trusted only if every listed file exists with that hash: this is what lets a re-submitted
run skip a finished stage, and what makes a corrupted file a re-run instead of a silent error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamray.contracts import STAGE_FILE
from dreamray.files import atomic_write_json, sha256_file
from dreamray.orchestration.identity import sha256_text
from dreamray.orchestration.storage import RunStorage, StorageError

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ManifestRecord:
    """What a stage says of its artifact in `stage.json`, besides the files' hashes.

    Attributes:
        stage: the stage's name.
        kind: its kind (`dreamray.contracts` TRAIN_KIND, MERGE_KIND, EVAL_KIND).
        spec_hash: the hash of its spec.
        identity: its identity (spec and inputs), where the executor has it.
        inputs: input stage -> artifact digest.
        steps: optimizer steps run.
        samples: samples consumed.
        metrics: its final metrics.
        details: kind-specific entries written beside the others (a train stage's `skipped`
            and `run_name`, a merge's `picked`).
    """

    stage: str
    kind: str
    spec_hash: str | None = None
    identity: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record's `stage.json` entries (None-valued ones left out)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "details" and getattr(self, f.name) is not None}
        clash = sorted(set(out) & set(self.details))
        if clash:
            raise ValueError(f"ManifestRecord.details repeats the record's own keys {clash}")
        return {**out, "inputs": dict(self.inputs), "metrics": dict(self.metrics),
                **self.details}


def hash_files(artifact_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under a local directory except the manifest itself.

    Args:
        artifact_dir: a local artifact directory.

    Returns:
        Relative POSIX path -> hex sha256, sorted by path.
    """
    root = Path(artifact_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != STAGE_FILE)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def artifact_digest(files: Mapping[str, str]) -> str:
    """One hash for a whole artifact: the sha256 of its sorted file -> sha256 map."""
    return sha256_text(json.dumps(dict(sorted(files.items())), sort_keys=True))


def manifest_files(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The file -> sha256 map of a manifest.

    Args:
        manifest: a parsed `stage.json`.

    Returns:
        Relative path -> hex sha256.

    Raises:
        ValueError: if the manifest has no usable `files` map.
    """
    files = manifest.get("files") if isinstance(manifest, Mapping) else None
    if not isinstance(files, Mapping) or not files:
        raise ValueError(f"{STAGE_FILE} has no 'files' map of relative path -> sha256")
    bad = sorted(str(rel) for rel, digest in files.items() if not isinstance(digest, str))
    if bad:
        raise ValueError(f"{STAGE_FILE}: files {bad} have no sha256 string")
    return {str(rel): digest for rel, digest in files.items()}


def build_manifest(artifact_dir: str | os.PathLike, record: ManifestRecord) -> dict[str, Any]:
    """A manifest for a finished local artifact directory.

    Args:
        artifact_dir: the directory whose files are hashed.
        record: what the stage says of the artifact.

    Returns:
        The manifest dict, `files` filled in.
    """
    return {"format": MANIFEST_FORMAT, **record.to_json(), "files": hash_files(artifact_dir)}


def write_manifest(artifact_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Write `stage.json` into a local directory (atomically: its presence means complete)."""
    atomic_write_json(Path(artifact_dir) / STAGE_FILE, dict(manifest))


def read_manifest(storage: RunStorage, artifact_rel: str) -> dict[str, Any]:
    """Read an artifact's `stage.json` from the run storage.

    Raises:
        StorageError: if the file is missing or not JSON.
    """
    rel = f"{artifact_rel}/{STAGE_FILE}"
    if not storage.exists(rel):
        raise StorageError(f"{storage.uri_of(artifact_rel)}: no {STAGE_FILE}")
    return storage.read_json(rel)


def verify_artifact(storage: RunStorage, artifact_rel: str) -> tuple[str | None, list[str]]:
    """Check every file an artifact's manifest lists against its sha256.

    Args:
        storage: the run storage.
        artifact_rel: the artifact directory, relative to the run directory.

    Returns:
        (digest of the artifact or None, list of problems; empty when the artifact is intact).
    """
    try:
        files = manifest_files(read_manifest(storage, artifact_rel))
    except (StorageError, ValueError) as err:
        return None, [str(err)]
    problems = []
    for rel, expected in files.items():
        path = f"{artifact_rel}/{rel}"
        if not storage.exists(path):
            problems.append(f"{rel}: missing")
        elif storage.sha256(path) != expected:
            problems.append(f"{rel}: sha256 mismatch (stage.json says {expected[:12]}...)")
    return (None if problems else artifact_digest(files)), problems
