"""`stage.json`: the manifest of a stage's artifact directory, and its verification.

The manifest names the stage, its spec hash and identity, the digests of its inputs, what it
did (steps, samples, metrics) and the sha256 of every other file of the directory. An artifact
is trusted only if every listed file exists with that hash: this is what lets a re-submitted
run skip a finished stage, and what makes a corrupted file a re-run instead of a silent error.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dreamray.orchestration.identity import sha256_text
from dreamray.orchestration.storage import RunStorage, StorageError, sha256_file

STAGE_JSON = "stage.json"
MANIFEST_FORMAT = 1


def hash_files(artifact_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under a local directory except the manifest itself.

    Args:
        artifact_dir: a local artifact directory.

    Returns:
        Relative POSIX path -> hex sha256, sorted by path.
    """
    root = Path(artifact_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != STAGE_JSON)
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
        raise ValueError("stage.json has no 'files' map of relative path -> sha256")
    out = {}
    for rel, value in files.items():
        # Accept {"path": "hex"} and {"path": {"sha256": "hex", ...}}: both carry the hash.
        digest = value.get("sha256") if isinstance(value, Mapping) else value
        if not isinstance(digest, str):
            raise ValueError(f"stage.json: file {rel!r} has no sha256")
        out[str(rel)] = digest
    return out


def build_manifest(artifact_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """A manifest for a finished local artifact directory.

    Args:
        artifact_dir: the directory whose files are hashed.
        **fields: stage, kind, spec_hash, identity, inputs, steps, samples, metrics, ...

    Returns:
        The manifest dict, `files` filled in.
    """
    return {"format": MANIFEST_FORMAT, **fields, "files": hash_files(artifact_dir)}


def write_manifest(artifact_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Write `stage.json` into a local directory."""
    text = json.dumps(dict(manifest), indent=2, sort_keys=True) + "\n"
    (Path(artifact_dir) / STAGE_JSON).write_text(text)


def read_manifest(storage: RunStorage, artifact_rel: str) -> dict[str, Any]:
    """Read an artifact's `stage.json` from the run storage.

    Raises:
        StorageError: if the file is missing or not JSON.
    """
    rel = f"{artifact_rel}/{STAGE_JSON}"
    if not storage.exists(rel):
        raise StorageError(f"{storage.uri_of(artifact_rel)}: no {STAGE_JSON}")
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


def staging_dir(final_dir: str | os.PathLike) -> Path:
    """A fresh temp directory next to `final_dir`, for an atomic `publish_dir`."""
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{uuid.uuid4().hex[:8]}-{final.name}"
    tmp.mkdir()
    return tmp


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Atomically move a finished temp directory to its final name.

    An existing `final_dir` (a stale or corrupted earlier output of the same identity) is
    removed first; the rename itself is atomic, so readers never see a half-written directory.
    """
    final = Path(final_dir)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp_dir, final)
    return final
