"""A run's storage: a local directory or any pyarrow.fs URI (`file://`, `s3://`, `gs://`, ...).

Everything the ledger and the runner read or write goes through `RunStorage`, addressed by
paths relative to the run directory, so the same code serves a laptop directory and a bucket.
Writes of single files are atomic (temp name, then rename); on object stores a PUT already is.

Credentials: `RunStorage.uri` / `uri_of` are redacted (`redact_uri`) and are what ledgers,
reports, logs and errors show; `open_uri` is the one form that carries credentials, handed only
in memory (Ray task arguments) to the stage tasks that re-open the run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

_CHUNK = 8 << 20  # sha256 streaming block: large enough for throughput, small in memory
REDACTED = "***"
# Query keys whose values are secrets in the URI forms of pyarrow, fsspec and presigned URLs.
_SECRET_KEY = re.compile(r"key|secret|token|passw|credential|signature|^sig$", re.IGNORECASE)
# The driver's AWS credentials that stage tasks on other processes and nodes must also use.
_AWS_ID, _AWS_SECRET, _AWS_TOKEN = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"


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
        self._secret_uri = join_uri(uri) if is_uri else str(Path(uri).expanduser().resolve())
        self.uri = redact_uri(self._secret_uri)
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self._secret_uri)
        except pa_errors() as err:
            # pyarrow's message may quote the URI, credentials included
            raise StorageError(f"cannot open run storage {self.uri!r}: "
                               f"{_scrub(str(err), self._secret_uri)}") from None
        self.root = self.root.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        """Whether the run directory is a path on this machine's filesystem."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str = "") -> str:
        """The filesystem path (for `self.fs`) of a run-relative path."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def uri_of(self, rel: str = "") -> str:
        """The redacted URI or local path of a run-relative path, to record or show."""
        return join_uri(self.uri, rel)

    def open_uri(self, rel: str = "") -> str:
        """A URI or local path that `RunStorage` / Ray Train can open again, on any node.

        It carries credentials (the URI's own, else the driver's AWS environment for `s3://`,
        see `with_env_credentials`): pass it in memory only, never record, log or print it.
        """
        return join_uri(with_env_credentials(self._secret_uri), rel)

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


def join_uri(uri: str, rel: str = "") -> str:
    """A local path or URI joined with a relative path, before any `?query` of the URI.

    Args:
        uri: a local path or URI (a trailing slash of its path is dropped).
        rel: a relative path ("" for `uri` itself).

    Returns:
        The joined path or URI, its query kept at the end.
    """
    head, sep, query = uri.partition("?") if "://" in uri else (uri, "", "")
    stripped = head.rstrip("/")
    if stripped and not stripped.endswith(":"):  # keep "/" and "file:///" whole
        head = stripped
    if rel:
        head = f"{head}{'' if head.endswith('/') else '/'}{rel.strip('/')}"
    return f"{head}{sep}{query}"


def redact_uri(uri: str) -> str:
    """A URI without its secrets: userinfo and secret-looking query values become `***`.

    Args:
        uri: a local path or URI (paths are returned unchanged).

    Returns:
        The URI with `user:password@` replaced by `***@` and the value of every query key
        that names a key, secret, token, password, credential or signature replaced by `***`.
    """
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_redact_param(p) for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_param(param: str) -> str:
    key, sep, _ = param.partition("=")
    return f"{key}{sep}{REDACTED}" if sep and _SECRET_KEY.search(unquote(key)) else param


def _scrub(text: str, secret_uri: str) -> str:
    """`text` with every secret part of `secret_uri` (userinfo, secret query values) removed."""
    parts = urlsplit(secret_uri)
    secrets = [parts.username, parts.password] if "@" in parts.netloc else []
    for param in parts.query.split("&"):
        key, sep, value = param.partition("=")
        if sep and value and _SECRET_KEY.search(unquote(key)):
            secrets.append(value)
    for secret in filter(None, secrets):
        for form in {secret, unquote(secret)}:
            text = text.replace(form, REDACTED)
    return text


def with_env_credentials(uri: str) -> str:
    """An `s3://` URI carrying this process's AWS credentials as its userinfo.

    Stage tasks, Ray Train's controller and its workers run in processes that need not share
    the driver's environment; Ray's runtime_env would forward the variables, but Ray writes
    runtime envs into its session logs. Credentials in the URI instead travel in task
    arguments and in the pickled pyarrow filesystem, which no log prints.

    Args:
        uri: a run storage URI or path.

    Returns:
        `uri` itself unless it is an `s3://` URI without userinfo and AWS_ACCESS_KEY_ID and
        AWS_SECRET_ACCESS_KEY are set (a session token cannot ride in the URI, so with
        AWS_SESSION_TOKEN set the nodes' own environment must provide credentials).
    """
    key_id, secret = os.environ.get(_AWS_ID), os.environ.get(_AWS_SECRET)
    parts = urlsplit(uri) if "://" in uri else None
    if (parts is None or parts.scheme != "s3" or "@" in parts.netloc or not key_id
            or not secret or os.environ.get(_AWS_TOKEN)):
        return uri
    netloc = f"{quote(key_id, safe='')}:{quote(secret, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def train_storage_args(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """Ray Train's `(storage_path, storage_filesystem)` for a train storage path or URI.

    A URI is resolved here so that Ray Train is given a filesystem object and a bare path:
    Ray never sees (so never logs) the URI and the credentials it may carry.

    Args:
        uri: a local path, or a URI from `RunStorage.open_uri`.

    Returns:
        `(path, None)` for a local path or `file://` URI, else `(filesystem path, filesystem)`.

    Raises:
        StorageError: if pyarrow cannot resolve the URI.
    """
    if "://" not in uri:
        return uri, None
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except pa_errors() as err:
        raise StorageError(f"cannot open train storage {redact_uri(uri)!r}: "
                           f"{_scrub(str(err), uri)}") from None
    return (path, None) if isinstance(fs, pafs.LocalFileSystem) else (path, fs)


def pa_errors() -> tuple[type[BaseException], ...]:
    """Exceptions pyarrow raises for an unusable URI."""
    import pyarrow as pa

    return (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError)
