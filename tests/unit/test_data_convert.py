"""Converters in process (no Ray): round trip of every synthetic source, every planted fault
rejected with its reason, manifest accounting, file-level failures, options."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dreamray.data.convert import (
    BadInputError,
    ConvertRequest,
    ReadContext,
    WorkUnit,
    convert_unit,
    run_conversion,
)
from dreamray.data.convert.cli import main as convert_main
from dreamray.data.convert.writer import ShardOptions
from dreamray.data.manifest import read_manifest, read_rejects, shard_paths
from dreamray.data.schema import SOURCES, UNIFIED_SCHEMA
from dreamray.data.synthetic import read_layouts, read_truth, write_source, write_synthetic
from dreamray.data.synthetic.images import bad_image, make_image
from dreamray.data.synthetic.verify import compare_with_truth


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    """Every synthetic source, with every planted fault."""
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, seed=3, faults=True)
    return out


def _request(syn: Path, source: str, output: Path, **kwargs) -> ConvertRequest:
    layout = read_layouts(syn)[source]
    ctx_keys = {"drop_bad_images"}
    ctx = ReadContext(source=source, images=layout.images,
                      **{k: v for k, v in kwargs.items() if k in ctx_keys})
    options = {k: v for k, v in kwargs.items() if k not in ctx_keys}
    return ConvertRequest(layout.converter, layout.inputs, output, ctx, use_ray=False,
                          progress=False, **{"skip_bad_files": True, **options})


@pytest.mark.parametrize("source", SOURCES)
def test_round_trip_with_every_fault(faulty, tmp_path, source):
    manifest = run_conversion(_request(faulty, source, tmp_path / source))
    truth = read_truth(faulty, source)
    assert compare_with_truth(tmp_path / source, truth) == []
    assert manifest["rows_in"] == manifest["rows_out"] + sum(manifest["rows_rejected"].values())
    assert manifest["rows_out"] == len(truth["rows"])
    assert manifest["rows_rejected"] == dict(Counter(truth["rejects"].values()))
    assert all(entry["bytes"] > 0 for entry in manifest["inputs"])
    for shard in shard_paths(tmp_path / source):
        assert pq.read_schema(shard).remove_metadata() == UNIFIED_SCHEMA.remove_metadata()


def test_unreadable_file_is_named_and_nothing_is_written(faulty, tmp_path):
    with pytest.raises(BadInputError, match=r"00002\.parquet"):
        run_conversion(_request(faulty, "laion400m", tmp_path / "out", skip_bad_files=False))
    assert list(tmp_path.iterdir()) == []


def test_skipped_file_is_recorded(faulty, tmp_path):
    manifest = run_conversion(_request(faulty, "blip_laion", tmp_path / "out"))
    (skipped,) = manifest["files_skipped"]
    assert skipped["path"].endswith("00002.parquet") and "Parquet" in skipped["error"]
    statuses = {Path(e["path"]).name: e["status"] for e in manifest["inputs"]}
    assert statuses["00002.parquet"] == "skipped" and statuses["00003.parquet"] == "ok"


def test_drop_bad_images_keeps_documents(faulty, tmp_path):
    strict = run_conversion(_request(faulty, "mmc4_core", tmp_path / "strict"))
    lenient = run_conversion(_request(faulty, "mmc4_core", tmp_path / "drop", drop_bad_images=True))
    image_reasons = {k: v for k, v in strict["rows_rejected"].items() if k.startswith("image_")}
    # Planted image faults sit beside one good image, except the tar docs (all images bad).
    kept = sum(image_reasons.values()) - 2
    assert lenient["rows_out"] == strict["rows_out"] + kept
    assert sum(lenient["images_dropped"].values()) == kept
    assert lenient["rows_in"] == lenient["rows_out"] + lenient["rows_rejected_total"]


def test_json_list_split_into_slices_gives_the_same_rows(faulty, tmp_path):
    manifest = run_conversion(_request(faulty, "llava_instruct", tmp_path / "out", split_rows=5,
                                       shard_options=ShardOptions(row_group_rows=2)))
    assert compare_with_truth(tmp_path / "out", read_truth(faulty, "llava_instruct")) == []
    assert len(manifest["shards"]) == 3  # 12 good rows over slices of 5 records
    assert pq.ParquetFile(shard_paths(tmp_path / "out")[0]).num_row_groups >= 2


def test_convert_unit_counts_one_file(faulty, tmp_path):
    layout = read_layouts(faulty)["laion_coco"]
    path = sorted(layout.inputs[0].glob("00003.parquet"))[0]  # lacks the caption column
    result = convert_unit(WorkUnit(str(path), 0), "img2dataset", ReadContext(source="laion_coco"),
                          str(tmp_path), ShardOptions())
    assert (result.rows_in, result.rows_out, dict(result.rejected)) == (3, 0, {"missing_column": 3})
    assert result.error is None and result.shards == []


def test_existing_output_needs_overwrite(faulty, tmp_path):
    run_conversion(_request(faulty, "journeydb", tmp_path / "out"))
    with pytest.raises(FileExistsError):
        run_conversion(_request(faulty, "journeydb", tmp_path / "out"))
    run_conversion(_request(faulty, "journeydb", tmp_path / "out", overwrite=True))
    rejected = read_manifest(tmp_path / "out")["rows_rejected_total"]
    assert len(read_rejects(tmp_path / "out")) == rejected


def test_synthetic_is_deterministic(tmp_path):
    digests = []
    for run in ("a", "b"):
        layout, _ = write_source(tmp_path / run, "mmc4_core", seed=7, faults=True)
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in layout.inputs])
    assert digests[0] == digests[1]


def test_truth_check_catches_a_wrong_conversion(faulty, tmp_path):
    run_conversion(_request(faulty, "llava_pretrain", tmp_path / "out"))
    truth = read_truth(faulty, "llava_pretrain")
    rid = sorted(truth["rows"])[0]
    truth["rows"][rid]["texts"] = ["changed"]
    truth["rejects"][next(iter(truth["rejects"]))] = "other_reason"
    assert len(compare_with_truth(tmp_path / "out", truth)) == 2


def test_cli_in_process(faulty, tmp_path, capsys):
    layout = read_layouts(faulty)["journeydb"]
    argv = ["journeydb", "--input", str(layout.inputs[0]), "--images", str(layout.images),
            "--output", str(tmp_path / "out"), "--no-ray", "--no-progress"]
    assert convert_main(argv) == 0
    assert "rows rejected" in capsys.readouterr().out
    bad = ["img2dataset", "--input", str(read_layouts(faulty)["laion400m"].inputs[0]),
           "--output", str(tmp_path / "bad"), "--no-ray", "--no-progress"]
    assert convert_main(bad) == 1
    assert "00002.parquet" in capsys.readouterr().err


def _tar(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_img2dataset_webdataset_tar(tmp_path):
    rng = np.random.default_rng(0)
    good = make_image(rng, "rgb_jpeg")
    meta = json.dumps({"status": "success", "similarity": 0.31}).encode()
    _tar(tmp_path / "00000.tar", {
        "000000000": {"jpg": good, "txt": b"a red car.", "json": meta},
        "000000001": {"jpg": good, "txt": b" ", "json": meta},
        "000000002": {"jpg": bad_image(rng, "image_truncated"), "txt": b"x"},
        "000000003": {"txt": b"no image", "json": meta},
        "000000004": {"jpg": good, "txt": b"y", "json": b'{"status": "failed_to_resize"}'},
    })
    (tmp_path / "00000.parquet").write_bytes(b"metadata only: ignored when tars exist")
    req = ConvertRequest("img2dataset", [tmp_path], tmp_path / "out",
                         ReadContext(source="laion400m"), use_ray=False, progress=False)
    manifest = run_conversion(req)
    assert manifest["rows_rejected"] == {"empty_caption": 1, "image_truncated": 1,
                                         "image_missing": 1, "status_not_success": 1}
    (row,) = pq.read_table(shard_paths(tmp_path / "out")[0]).to_pylist()
    assert row["id"] == "laion400m/00000/000000000" and row["images"] == [good]
    assert row["texts"] == ["a red car."] and row["image_sim"] == [pytest.approx(0.31)]
