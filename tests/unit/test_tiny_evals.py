"""The tiny evaluation sets: real layouts, read by the eval stages' own loaders, written once."""

from __future__ import annotations

from dreamray.config.eval_specs import CocoFidParams, VqaParams
from dreamray.evals.captions import build_coco_manifest
from dreamray.evals.tiny import build_tiny_evals, main
from dreamray.evals.vqa_data import load_questions


def test_tiny_sets_load_through_the_eval_loaders(tmp_path):
    sets = build_tiny_evals(tmp_path, seed=0, num_images=6, num_questions=5)
    manifest = build_coco_manifest(sets.coco_captions, num_samples=4, seed=0)
    assert len(manifest.items) == 4
    assert len(list(sets.coco_ref_images.iterdir())) == 6
    questions = load_questions("textvqa", sets.textvqa_questions)
    assert len(questions) == 5
    for q in questions:
        assert (sets.textvqa_images / q.image).is_file()
        assert q.answers.count(q.answers[0]) == 9  # the colour of the image, 9 of 10
    CocoFidParams(captions=str(sets.coco_captions), ref_images=str(sets.coco_ref_images),
                  feature_extractor="tiny:0", seeds=[42])
    VqaParams(benchmark="textvqa", questions=str(sets.textvqa_questions),
              images=str(sets.textvqa_images))


def test_an_existing_set_is_kept_and_the_cli_prints_the_paths(tmp_path, capsys):
    sets = build_tiny_evals(tmp_path, seed=0, num_images=3, num_questions=2)
    before = sets.coco_captions.read_text(), sets.textvqa_questions.read_text()
    assert main(["--out", str(tmp_path), "--seed", "1"]) == 0
    assert (sets.coco_captions.read_text(), sets.textvqa_questions.read_text()) == before
    assert str(sets.textvqa_questions) in capsys.readouterr().out
