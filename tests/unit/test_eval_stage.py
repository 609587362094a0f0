"""The eval stage hook: typed spec in, manifest / results out; missing inputs fail fast."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from dreamray.config import EvalStageSpec
from dreamray.evals.captions import read_manifest
from dreamray.evals.stage import pool_options, run_eval_stage


def test_coco_fid_stage_generates_and_scores_in_process(tiny_zoo, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from coco_fixtures import write_artifact, write_captions, write_ref_stats

    from dreamray.evals.pool import PoolOptions
    from dreamray.evals.stage import run_coco_fid

    artifact = write_artifact(tiny_zoo, tmp_path / "artifact")
    params = {
        "captions": str(write_captions(tmp_path / "captions.json")),
        "ref_stats": str(write_ref_stats(tmp_path)),
        "feature_extractor": "tiny:0",
        "num_samples": 3,
        "seeds": [42],
        "num_inference_steps": 2,
        "resolution": 16,
        "generation_batch_size": 2,
    }
    spec = EvalStageSpec.model_validate(
        {"kind": "eval", "eval": {"task": "coco_fid", "model": str(artifact), "params": params}}
    )
    local = PoolOptions(num_actors=0)
    result = run_coco_fid(spec.eval.params, str(artifact), tmp_path / "out", local)
    manifest = read_manifest(tmp_path / "out" / "manifest.json")
    assert len(manifest.items) == 3 and manifest.meta["num_samples"] == 3
    assert result["card"]["N"] == 3 and result["folders"]["seed42"]["n"] == 3
    assert result["fid"] == result["fid_per_seed"]["42"]
    wrong = spec.eval.params.model_copy(update={"resolution": 512})
    with pytest.raises(ValueError, match="16 px"):  # a re-run finds the images, checks the size
        run_coco_fid(wrong, str(artifact), tmp_path / "out", local)
    with pytest.raises(ValueError, match="16 px"):  # a new run: checked before generating
        run_coco_fid(wrong, str(artifact), tmp_path / "new", local)
    assert not list((tmp_path / "new").rglob("*.png"))


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


def test_vqa_stage_prompts_with_the_models_own_patch_count(tiny_zoo, tmp_path):
    # The tiny CLIP has 16 patches, not ViT-L/14's 256: a prompt spelled with any other count
    # is a malformed IMG block for the model.
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from coco_fixtures import write_artifact

    from dreamray.config.eval_specs import VqaParams
    from dreamray.evals.pool import PoolOptions
    from dreamray.evals.stage import run_vqa
    from dreamray.evals.tiny import build_tiny_evals

    artifact = write_artifact(tiny_zoo, tmp_path / "artifact")
    sets = build_tiny_evals(tmp_path / "evals", num_images=2, num_questions=2)
    params = VqaParams(benchmark="textvqa", questions=str(sets.textvqa_questions),
                       images=str(sets.textvqa_images), num_beams=1, max_new_tokens=2,
                       batch_size=2)
    result = run_vqa(params, str(artifact), tmp_path / "out", PoolOptions(num_actors=0))
    assert result["n"] == 2 and result["missing"] == 0


def test_base_model_artifact_holds_the_plugins_stage_one_starts_from(tiny_zoo, tmp_path):
    import torch

    from dreamray.config.specs import ModelSpec, TrainStageSpec
    from dreamray.model.artifact import read_plugin_states
    from dreamray.orchestration.executors import base_model_artifact
    from dreamray.train.engine import build_stage_model

    model = ModelSpec(llm_path=str(tiny_zoo.llm), vision_path=str(tiny_zoo.vision),
                      diffusion_path=str(tiny_zoo.diffusion), num_dream_queries=4,
                      max_length=256)
    params = {"captions": "c.json", "truth": "t.json"}
    stage = EvalStageSpec.model_validate(
        {"kind": "eval", "seed": 5, "base_model": model.model_dump(),
         "eval": {"task": "attribute_match", "model": "base", "params": params}})
    out = base_model_artifact(stage, tmp_path / "base_model")
    train = TrainStageSpec.model_validate({
        "model": model.model_dump(), "trainable": ["dream_queries"], "seed": 5,
        "data": {"mode": "creation", "num_samples": 4,
                 "sources": [{"name": "laion400m", "path": "x", "weight": 1.0}]},
        "optim": {"lr": 1e-3}, "loss": {"lm": 0.0, "vm": 1.0}, "deepspeed": {"global_batch_size": 4,
                                                          "micro_batch_per_gpu": 4}})
    torch.manual_seed(train.seed)  # as train/worker.py seeds before building
    started = build_stage_model(train)
    saved = read_plugin_states(out)
    queries = next(v for k, v in saved["dream_embedding"].items() if "dream_queries" in k)
    assert torch.equal(queries.reshape(started.dream_embedding.dream_queries.shape),
                       started.dream_embedding.dream_queries.detach())
    stamp = (out / "config.json").stat().st_mtime_ns
    assert base_model_artifact(stage, out) == out  # a resumed eval keeps it
    assert (out / "config.json").stat().st_mtime_ns == stamp
