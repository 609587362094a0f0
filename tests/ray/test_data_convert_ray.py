"""The Ray fan-out of the converters, on the shared local cluster."""

from __future__ import annotations

import pytest

from dreamray.data.convert import BadInputError, ConvertRequest, ReadContext, run_conversion
from dreamray.data.synthetic import read_truth, write_source
from dreamray.data.synthetic.verify import compare_with_truth


def test_fan_out_over_files_matches_truth(ray_cluster, tmp_path):
    layout, _ = write_source(tmp_path / "syn", "mmc4_core", seed=1, faults=True)
    assert len(layout.inputs) == 4  # two .jsonl and two .tar inputs: four tasks
    req = ConvertRequest("mmc4", layout.inputs, tmp_path / "out",
                         ReadContext(source="mmc4_core", images=layout.images), progress=False)
    manifest = run_conversion(req)
    assert compare_with_truth(tmp_path / "out", read_truth(tmp_path / "syn", "mmc4_core")) == []
    assert [e["status"] for e in manifest["inputs"]] == ["ok"] * 4


def test_fan_out_fails_fast_on_an_unreadable_file(ray_cluster, tmp_path):
    layout, _ = write_source(tmp_path / "syn", "laion_coco", seed=1, faults=True)
    req = ConvertRequest("img2dataset", layout.inputs, tmp_path / "out",
                         ReadContext(source="laion_coco"), progress=False)
    with pytest.raises(BadInputError, match=r"00002\.parquet"):
        run_conversion(req)
    assert not (tmp_path / "out").exists()
    manifest = run_conversion(ConvertRequest(
        "img2dataset", layout.inputs, tmp_path / "out", ReadContext(source="laion_coco"),
        skip_bad_files=True, progress=False))
    assert compare_with_truth(tmp_path / "out", read_truth(tmp_path / "syn", "laion_coco")) == []
    assert len(manifest["files_skipped"]) == 1
