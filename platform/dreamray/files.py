"""Atomic writes and file digests: the one home of the temp-file-then-rename rule.

Every file or directory that a reader (a resumed stage, a merge, an eval pool, a second driver)
may look at while it is being written goes through here, so a crash leaves either the old
content or the new one, never half of either. The temp names start with a dot and sit next to
the target: same filesystem, so `os.replace` is atomic, and hidden from listings.

Pure: standard library only (no Ray, no torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temp path next to `path` to write to; renamed onto `path` when the block ends.

    For writers that want a file name rather than a file object (``np.savez``, PIL's
    ``Image.save``, ``shutil.copyfile``).

    Args:
        path: the final file; its parent is created.
        suffix: the temp name's ending (some writers key on it, e.g. ``.npz``; listings may
            skip it).

    Yields:
        The temp path (it exists, empty).

    Raises:
        Whatever the block raises, with a note naming `path`; the temp file is removed and
        `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        err.add_note(f"while writing {path}: nothing was written there (the temp file is removed)")
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w",
                 encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """An open file that replaces `path` when the block ends without an error.

    Args:
        path: the final file; its parent is created.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: the text encoding (ignored for ``"wb"``).

    Yields:
        The open temp file.

    Raises:
        ValueError: a mode other than ``"w"`` / ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2,
                      sort_keys: bool = True) -> Path:
    """Write `obj` as JSON (with a final newline) through `atomic_write`.

    Returns:
        The path written.
    """
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")
    return Path(path)


def staging_dir(final_dir: str | os.PathLike) -> Path:
    """A fresh, hidden temp directory next to `final_dir`, to be published by `publish_dir`."""
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{uuid.uuid4().hex[:8]}-{final.name}"
    tmp.mkdir()
    return tmp


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Move a finished staging directory (or file) to its final name.

    An existing `final_dir` (a stale output of the same identity) is first renamed aside, so
    there is no moment at which a reader finds `final_dir` half-written; it is deleted after
    the new one is in place.

    Returns:
        The final directory.
    """
    final = Path(final_dir)
    if final.exists():
        old = final.parent / f".old-{uuid.uuid4().hex[:8]}-{final.name}"
        os.replace(final, old)
        os.replace(tmp_dir, final)
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.replace(tmp_dir, final)
    return final


@contextmanager
def atomic_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """A staging directory that becomes `final_dir` when the block ends without an error.

    Yields:
        The staging directory to fill.

    Raises:
        Whatever the block raises, with a note naming `final_dir`; the staging directory is
        removed and `final_dir` is left as it was.
    """
    tmp = staging_dir(final_dir)
    try:
        yield tmp
        publish_dir(tmp, final_dir)
    except BaseException as err:
        err.add_note(f"while writing {final_dir}: nothing was published there (the staging dir "
                     "is removed)")
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def sha256_file(path: str | os.PathLike, chunk: int = _CHUNK) -> str:
    """Hex sha256 of a local file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
