"""COCO generate-and-score through the CLI on 2 generation actors (Ray), end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from coco_fixtures import SEEDS, N, write_artifact, write_captions, write_ref_stats  # noqa: E402

from dreamray.evals.clip_rerank import build_tiny_clip  # noqa: E402
from dreamray.evals.results import ResultsStore  # noqa: E402


def _coco_fid_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("coco_fid_cli", REPO / "evals" / "coco_fid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_generate_and_score_on_two_actors(ray_cluster, tiny_zoo, tmp_path, capsys):
    argv = [
        "generate-and-score",
        "--model",
        str(write_artifact(tiny_zoo, tmp_path / "artifact")),
        "--captions",
        str(write_captions(tmp_path / "captions.json")),
        "--n",
        str(N),
        "--seeds",
        f"{SEEDS[0]}..{SEEDS[-1]}",
        "--steps",
        "2",
        "--guidance",
        "2.0",
        "--scheduler",
        "ddpm",
        "--clip-rerank",
        str(build_tiny_clip(tmp_path / "clip", tiny_zoo.llm)),
        "--ref-stats",
        str(write_ref_stats(tmp_path)),
        "--out-dir",
        str(tmp_path / "out"),
        "--feature-extractor",
        "tiny:0",
        "--num-actors",
        "2",
        "--batch-size",
        "2",
        "--gen-chunk-size",
        "2",
        "--no-progress",
    ]
    assert _coco_fid_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    out = tmp_path / "out"
    assert printed["status"] == "complete" and printed["generated"] == N * len(SEEDS)
    assert printed["headline"] == "reranked" and printed["fid"] == printed["fid_reranked"]
    assert sorted(printed["fid_per_seed"]) == [str(s) for s in SEEDS]
    assert len(ResultsStore(out / "generated.jsonl")) == N * len(SEEDS)
    assert len(list((out / "images" / "reranked").glob("*.png"))) == N
    assert json.loads((out / "scores.json").read_text())["card"]["seeds"] == list(SEEDS)
    assert (out / "grid.png").is_file()
