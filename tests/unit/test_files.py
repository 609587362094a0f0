"""Atomic writes: a failure while writing leaves the old content (or nothing) and says where."""

from __future__ import annotations

import errno
import json

import pytest

from dreamray.files import atomic_dir, atomic_write, atomic_write_json, sha256_file


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_json_round_trip_and_replace(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2} and list(path.parent.iterdir()) == [path]


def test_a_failed_file_write_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(OSError) as err:
        with atomic_write(path) as f:
            f.write("half of the new")
            _no_space()
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    assert any(str(path) in note for note in err.value.__notes__)


def test_a_failed_dir_write_publishes_nothing_and_names_the_dir(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(OSError, match="No space left") as err:
        with atomic_dir(final) as staging:
            (staging / "weights.bin").write_bytes(b"x" * 10)
            _no_space()
    assert not final.exists() and list(tmp_path.iterdir()) == []
    assert any(f"while writing {final}: nothing was published" in n for n in err.value.__notes__)


def test_a_dir_replaces_an_old_one_whole(tmp_path):
    final = tmp_path / "artifact"
    for content in ("old", "new"):
        with atomic_dir(final) as staging:
            (staging / f"{content}.txt").write_text(content)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert list(tmp_path.iterdir()) == [final]


def test_sha256_file(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    assert sha256_file(tmp_path / "x") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
