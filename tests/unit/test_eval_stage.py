"""The eval stage hook: typed spec in, manifest / results out; missing model APIs fail fast."""

from __future__ import annotations

import json

import pytest

from dreamray.config import EvalStageSpec
from dreamray.evals.captions import read_manifest
from dreamray.evals.stage import pool_options, run_eval_stage


def test_coco_fid_stage_fixes_the_manifest_then_reports_missing_generation(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(1, 6)]
    annotations = [{"id": i, "image_id": i, "caption": f"caption {i}"} for i in range(1, 6)]
    (tmp_path / "captions.json").write_text(
        json.dumps({"images": images, "annotations": annotations})
    )
    spec = EvalStageSpec.model_validate(
        {
            "kind": "eval",
            "eval": {
                "task": "coco_fid",
                "model": str(tmp_path),
                "params": {
                    "captions": str(tmp_path / "captions.json"),
                    "ref_stats": "ref.npz",
                    "num_samples": 3,
                    "seeds": [42],
                },
            },
        }
    )
    with pytest.raises(NotImplementedError, match="generate-and-score"):
        run_eval_stage(spec, str(tmp_path), str(tmp_path / "out"))
    manifest = read_manifest(tmp_path / "out" / "manifest.json")
    assert len(manifest.items) == 3 and manifest.meta["num_samples"] == 3
    with pytest.raises(NotImplementedError):  # a re-run finds the same manifest
        run_eval_stage(spec, str(tmp_path), str(tmp_path / "out"))


def test_vqa_stage_fails_fast_without_text_generation(tmp_path):
    spec = EvalStageSpec.model_validate(
        {
            "kind": "eval",
            "scaling": {"num_workers": 3},
            "eval": {
                "task": "vqa",
                "model": str(tmp_path),
                "params": {"benchmark": "textvqa", "questions": "q.json", "images": "img"},
            },
        }
    )
    assert pool_options(spec.scaling).num_actors == 3
    with pytest.raises(NotImplementedError, match="DreamLLM.generate"):
        run_eval_stage(spec, str(tmp_path), str(tmp_path / "out"))
