"""The eval CLIs: defaults and choices from the recipe specs, missing weights before Ray starts."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from dreamray.config.eval_specs import CocoFidParams, VqaParams
from dreamray.evals import cli_params, features
from dreamray.evals.cli_params import Flag, add_spec_options, spec_values

REPO = Path(__file__).resolve().parents[2]


def _cli(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", REPO / "evals" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a CLI connects to Ray (a missing file must stop it before)."""
    import ray

    def started(*_, **__):
        raise AssertionError("the CLI started Ray")

    monkeypatch.setattr(cli_params, "ensure_ray", started)
    yield
    assert not ray.is_initialized()


class Toy(BaseModel):
    name: str = Field(description="a name")
    mode: Literal["a", "b"] = "b"
    level: Literal[1, 2] | None = None
    rate: float = 0.5
    items: list[int] = Field(default_factory=lambda: [1, 2])


def test_flags_take_default_choices_and_type_from_the_spec_field():
    parser = argparse.ArgumentParser()
    flags = (Flag("name"), Flag("mode", ("-m",)), Flag("level"), Flag("rate"))
    add_spec_options(parser, Toy, flags)
    args = parser.parse_args(["--name", "x"])
    assert spec_values(args, flags) == {"name": "x", "mode": "b", "level": None, "rate": 0.5}
    args = parser.parse_args(["--name", "x", "-m", "a", "--level", "2", "--rate", "2"])
    assert Toy(**spec_values(args, flags)) == Toy(name="x", mode="a", level=2, rate=2.0)
    for bad in (["--mode", "a"], ["--name", "x", "--mode", "c"], ["--name", "x", "--level", "3"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(TypeError, match="items"):
        add_spec_options(argparse.ArgumentParser(), Toy, (Flag("items"),))
    add_spec_options(parser, Toy, (Flag("items", type=lambda s: [int(s)]),))
    assert parser.parse_args(["--name", "x"]).items == [1, 2]


def test_coco_fid_defaults_are_the_recipes():
    cli = _cli("coco_fid")
    argv = ["generate-and-score", "--model", "m", "--captions", "c.json", "--ref-stats", "r.npz",
            "--out-dir", "o"]
    args = cli.build_parser().parse_args(argv)
    assert cli.params_from_args(args) == CocoFidParams(
        captions="c.json", ref_stats="r.npz", clip_rerank=False
    )
    assert args.feature_batch_size == CocoFidParams.model_fields["feature_batch_size"].default
    short = cli.build_parser().parse_args([*argv, "--n", "7", "--steps", "3", "--seeds", "1..3",
                                           "--clip-rerank", "clip", "--batch-size", "5"])
    params = cli.params_from_args(short)
    assert (params.num_samples, params.num_inference_steps, params.seeds) == (7, 3, [1, 2, 3])
    assert params.clip_model == "clip" and params.clip_rerank
    assert params.generation_batch_size == 5 and short.feature_batch_size == 50
    score = cli.build_parser().parse_args(
        ["score", "--images", "a", "--ref-images", "b", "--protocol", "clean", "--batch-size", "9"]
    )
    assert score.feature_batch_size == 9
    scored = cli.build_parser().parse_args(["score", "--images", "a", "--ref-images", "b",
                                            "--protocol", "clean"])
    assert scored.feature_batch_size == CocoFidParams.model_fields["feature_batch_size"].default
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*argv, "--protocol", "legacy_tensorflow"])


def test_vqa_defaults_and_choices_are_the_recipes():
    cli = _cli("vqa")
    base = ["--format", "textvqa", "--questions", "q.json"]
    gen = cli.build_parser().parse_args(["generate", *base, "--preset", "textvqa", "--model", "m",
                                         "--images", "i", "--results", "r.jsonl"])
    spec = VqaParams(benchmark="textvqa", questions="q.json", images="i")
    assert (gen.num_beams, gen.max_new_tokens, gen.batch_size) == (
        spec.num_beams, spec.max_new_tokens, spec.batch_size)
    score = cli.build_parser().parse_args(["score", *base, "--predictions", "p.json"])
    assert score.variant == spec.variant
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["score", *base, "--predictions", "p", "--variant", "nope"])


def test_coco_fid_score_without_inception_fails_before_ray(tmp_path, monkeypatch, capsys, no_ray):
    monkeypatch.setattr(features, "CLEAN_FID_CACHE", tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    argv = ["score", "--images", str(tmp_path / "a"), "--ref-images", str(tmp_path / "b"),
            "--protocol", "clean"]
    assert _cli("coco_fid").main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / features.TORCHSCRIPT_NAME) in err and "--inception-weights" in err
    assert "Traceback" not in err


def test_coco_fid_generate_without_clip_or_model_fails_before_ray(tmp_path, capsys, no_ray):
    cli = _cli("coco_fid")
    argv = ["generate-and-score", "--captions", "c.json", "--ref-stats", "r.npz",
            "--out-dir", str(tmp_path / "out"), "--feature-extractor", "tiny:0"]
    model = tmp_path / "model"
    assert cli.main([*argv, "--model", str(model), "--clip-rerank", str(tmp_path / "clip")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "clip" / "config.json") in err and "--clip-model" in err
    assert cli.main([*argv, "--model", str(model), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert str(model / "config.json") in err and "--model" in err
    assert not (tmp_path / "out").exists()


def test_vqa_generate_without_a_model_fails_before_ray(tmp_path, capsys, no_ray):
    question = {"question_id": 1, "image": "1.jpg", "question": "what?", "answer": ["x"] * 10}
    (tmp_path / "q.json").write_text(json.dumps([question]))
    argv = ["generate", "--format", "omni", "--questions", str(tmp_path / "q.json"),
            "--preset", "textvqa", "--model", str(tmp_path / "model"),
            "--images", str(tmp_path), "--results", str(tmp_path / "r.jsonl")]
    assert _cli("vqa").main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "model" / "config.json") in err and "--model" in err
