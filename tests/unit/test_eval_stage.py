"""The eval stage hook: typed spec in, manifest / results out; missing model APIs fail fast."""

from __future__ import annotations

import functools
import json
from pathlib import Path

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


def test_vqa_stage_reads_its_questions_before_starting_actors(tmp_path):
    from dreamray.evals.vqa_data import VqaDataError

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
    with pytest.raises(VqaDataError, match="q.json"):
        run_eval_stage(spec, str(tmp_path), str(tmp_path / "out"))


def test_dreamllm_answers_vqa_in_process(tiny_zoo, tmp_path):
    import sys

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from model_fixtures import built_model

    from dreamray.evals.pool import PoolOptions
    from dreamray.evals.results import ResultsStore
    from dreamray.evals.vqa_data import load_questions
    from dreamray.evals.vqa_eval import dreamllm_generator, generate_answers
    from dreamray.evals.vqa_prompts import PRESETS

    built_model(tiny_zoo).save_pretrained(tmp_path / "artifact")
    for i in range(3):
        Image.new("RGB", (40 + 8 * i, 36), (60 * i, 90, 200)).save(tmp_path / f"{i}.jpg")
    data = [
        {"question_id": i, "image": f"{i}.jpg", "question": f"what is {i}?", "answer": ["x"] * 10}
        for i in range(3)
    ]
    (tmp_path / "q.json").write_text(json.dumps(data))
    questions = load_questions("omni", tmp_path / "q.json")
    factory = functools.partial(dreamllm_generator, str(tmp_path / "artifact"), 2, 3)
    store = ResultsStore(tmp_path / "answers.jsonl")
    answers = generate_answers(
        questions,
        factory,
        PRESETS["vizwiz_test"],
        store,
        str(tmp_path),
        num_patches=None,
        batch_size=2,
        progress=False,
        pool=PoolOptions(num_actors=0),
    )
    assert sorted(answers) == ["0", "1", "2"]
    record = store.records()["1"]
    assert "check" in record and isinstance(record["answer"], str)
