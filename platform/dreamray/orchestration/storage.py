"""A run's storage: a local directory or any pyarrow.fs URI (`file://`, `s3://`, `gs://`, ...).

Everything the ledger and the runner read or write goes through `RunStorage`, addressed by
paths relative to the run directory, so the same code serves a laptop directory and a bucket.
Writes of single files are atomic (temp name, then rename); on object stores a PUT already is.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

_CHUNK = 8 << 20  # sha256 streaming block: large enough for throughput, small in memory


class StorageError(RuntimeError):
    """A run directory that cannot be opened, read or written."""


class RunStorage:
    """The run directory on its filesystem; every path argument is relative to it."""

    def __init__(self, uri: str):
        """Open a run directory.

        Args:
            uri: a local path (relative paths are made absolute) or a pyarrow.fs URI.

        Raises:
            StorageError: if pyarrow cannot resolve the URI to a filesystem.
        """
        is_uri = "://" in uri
        self.uri = uri.rstrip("/") if is_uri else str(Path(uri).expanduser().resolve())
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except pa_errors() as err:
            raise StorageError(f"cannot open run storage {uri!r}: {err}") from err
        self.root = self.root.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        """Whether the run directory is a path on this machine's filesystem."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str = "") -> str:
        """The filesystem path (for `self.fs`) of a run-relative path."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def uri_of(self, rel: str = "") -> str:
        """A URI or local path that `RunStorage` / Ray Train can open again."""
        return f"{self.uri}/{rel}".rstrip("/") if rel else self.uri

    def local_path(self, rel: str = "") -> Path:
        """The local path of a run-relative path.

        Raises:
            StorageError: if the run storage is not a local filesystem.
        """
        if not self.is_local:
            raise StorageError(f"{self.uri} is not on a local filesystem")
        return Path(self.path(rel))

    def exists(self, rel: str) -> bool:
        """Whether a file or directory exists."""
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str) -> bool:
        """Whether `rel` is an existing directory."""
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory

    def read_text(self, rel: str) -> str:
        """Read a whole text file."""
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read().decode("utf-8")

    def read_json(self, rel: str) -> Any:
        """Read a JSON file.

        Raises:
            StorageError: if the file is not valid JSON.
        """
        text = self.read_text(rel)
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise StorageError(f"{self.uri_of(rel)}: not valid JSON: {err}") from err

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole file."""
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file atomically: a temp file next to it, then a rename."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{target.rsplit('/', 1)[1]}"
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(data)
        self.fs.move(tmp, target)

    def write_text(self, rel: str, text: str) -> None:
        """Write a text file atomically (see `write_bytes`)."""
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        """Write an object as indented, key-sorted JSON, atomically."""
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def list_files(self, rel: str) -> list[str]:
        """Every file under a directory, as paths relative to that directory, sorted."""
        base = self.path(rel)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(
            i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File
        )

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under a directory (files and directories), sorted."""
        selector = pafs.FileSelector(self.path(rel), recursive=False, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector))

    def sha256(self, rel: str) -> str:
        """Hex sha256 of a file's bytes, streamed."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(rel)) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def delete_file(self, rel: str) -> None:
        """Remove a file; a missing file is fine."""
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def delete_dir(self, rel: str) -> None:
        """Remove a directory and its contents; a missing directory is fine."""
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

    def move(self, src_rel: str, dst_rel: str) -> None:
        """Rename within the run storage (atomic on local filesystems)."""
        self.fs.move(self.path(src_rel), self.path(dst_rel))

    def download_dir(self, rel: str, local_dir: str | os.PathLike) -> Path:
        """Copy a run directory's subtree to a local directory (for remote storage)."""
        local = Path(local_dir)
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path(rel), str(local), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return local

    def upload_dir(self, local_dir: str | os.PathLike, rel: str) -> None:
        """Copy a local directory into the run storage under `rel`."""
        self.fs.create_dir(self.path(rel), recursive=True)
        pafs.copy_files(str(local_dir), self.path(rel),
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)


def pa_errors() -> tuple[type[BaseException], ...]:
    """Exceptions pyarrow raises for an unusable URI."""
    import pyarrow as pa

    return (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError)
