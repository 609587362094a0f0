"""The tiny recipe's data command: every source converted, idempotent."""

from __future__ import annotations

from dreamray.data.manifest import MANIFEST_NAME, read_manifest
from dreamray.data.schema import SOURCES
from dreamray.data.synthetic import read_truth
from dreamray.data.synthetic.verify import compare_with_truth
from dreamray.data.tiny import SOURCES_DIR, build_tiny_data


def test_tiny_data_is_complete_and_idempotent(tmp_path):
    dirs = build_tiny_data(tmp_path, seed=0, use_ray=False)
    assert sorted(dirs) == sorted(SOURCES)
    for source, path in dirs.items():
        assert path == tmp_path / "shards" / source
        assert read_manifest(path)["rows_out"] > 0
        assert compare_with_truth(path, read_truth(tmp_path / SOURCES_DIR, source)) == []
    stamps = {s: (p / MANIFEST_NAME).stat().st_mtime_ns for s, p in dirs.items()}
    build_tiny_data(tmp_path, seed=0, use_ray=False)
    assert stamps == {s: (p / MANIFEST_NAME).stat().st_mtime_ns for s, p in dirs.items()}
