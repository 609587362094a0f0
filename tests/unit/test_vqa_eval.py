"""VQA plumbing: loaders, prompts, post-processing, scoring, EvalAI files, resumable generation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dreamray.evals.pool import PoolOptions
from dreamray.evals.results import ResultsStore
from dreamray.evals.vqa_data import VqaDataError, load_predictions, load_questions
from dreamray.evals.vqa_eval import (
    evalai_results,
    generate_answers,
    lookup_generator,
    score_predictions,
)
from dreamray.evals.vqa_prompts import (
    PRESETS,
    answer_batch,
    answerable_check_prompt,
    postprocess,
    vqa_prompt,
)

REPO = Path(__file__).resolve().parents[2]
SYSTEM = (
    " A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def vqav2(tmp_path):
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"question_id": 11, "image_id": 42, "question": "What color is the cat?"},
            {"question_id": 12, "image_id": 42, "question": "How many dogs?"},
        ],
    }
    answers = {11: ["black"] * 6 + ["gray"] * 4, 12: ["2"] * 3 + ["3"] * 7}
    annotations = {
        "annotations": [
            {
                "question_id": q,
                "question_type": "what",
                "answer_type": t,
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers[q])],
            }
            for q, t in ((11, "other"), (12, "number"))
        ]
    }
    return _write(tmp_path / "q.json", questions), _write(tmp_path / "a.json", annotations)


def test_vqav2_loader_joins_questions_and_annotations(vqav2):
    items = load_questions("vqav2", *vqav2)
    assert [q.question_id for q in items] == ["11", "12"]
    assert items[0].image == "COCO_val2014_000000000042.jpg"
    assert items[1].answers[:3] == ("2", "2", "2") and items[1].answer_type == "number"
    assert load_questions("okvqa", vqav2[0])[0].answers is None  # a test split


def test_single_file_formats(tmp_path):
    textvqa = {
        "data": [
            {"question_id": 5, "question": "brand?", "image_id": "ab12", "answers": ["sony"] * 10}
        ]
    }
    vizwiz = [
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "what is this?",
            "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 10,
            "answer_type": "other",
            "answerable": 1,
        }
    ]
    omni = [{"question_id": 7, "image": "x.jpg", "question": "q?", "answer": ["a"] * 10}]
    t = load_questions("textvqa", _write(tmp_path / "t.json", textvqa))[0]
    v = load_questions("vizwiz", _write(tmp_path / "v.json", vizwiz))[0]
    o = load_questions("omni", _write(tmp_path / "o.json", omni))[0]
    assert (t.question_id, t.image, t.answers[0]) == ("5", "ab12.jpg", "sony")
    assert (v.question_id, v.answer_type) == ("VizWiz_val_00000001.jpg", "other")
    assert (o.question_id, o.image, len(o.answers)) == ("7", "x.jpg", 10)


def test_loader_errors_name_the_question(tmp_path, vqav2):
    nine = [{"question_id": 99, "image": "x.jpg", "question": "q?", "answer": ["a"] * 9}]
    with pytest.raises(VqaDataError, match="question 99 has 9 answers"):
        load_questions("omni", _write(tmp_path / "nine.json", nine))
    annotations = json.loads(vqav2[1].read_text())
    annotations["annotations"].pop()
    with pytest.raises(VqaDataError, match="question 12 has no annotation"):
        load_questions("vqav2", vqav2[0], _write(tmp_path / "a2.json", annotations))
    with pytest.raises(VqaDataError, match="not a textvqa file"):
        load_questions("textvqa", vqav2[0])
    with pytest.raises(VqaDataError, match="unknown VQA format"):
        load_questions("gqa", vqav2[0])


def test_prompts_follow_the_reference_template():
    prompt = vqa_prompt("What color is the cat?", PRESETS["vqav2"], num_patches=2)
    assert prompt == (
        f"{SYSTEM} USER: Based on the image, please answer the question.<im_start><im_patch>"
        "<im_patch><im_end>What color is the cat?Please provide an accurate answer within one "
        "word. ASSISTANT: The short answer (one word) is:"
    )
    bare = vqa_prompt("Q?", PRESETS["vizwiz_val"], num_patches=1)
    assert bare.endswith("USER: <im_start><im_patch><im_end>Q? ASSISTANT:")
    turn = vqa_prompt("Q?", PRESETS["conversation"], num_patches=1)
    assert turn == f"{SYSTEM} USER: <im_start><im_patch><im_end>\nQ? ASSISTANT:"
    check = answerable_check_prompt("Q?", num_patches=1)
    assert check.endswith("<im_end>Q?Is the answer can be known? ASSISTANT:")


def test_clip_postprocessing():
    assert postprocess("Two dogs, one cat.", clip=True) == "two dogs"
    assert postprocess('"Yes."', clip=True) == "yes"
    assert postprocess("3.5 meters", clip=True) == "35 meters"  # the reference drops every "."
    assert postprocess("Red, white.", clip=False) == "Red, white."


def test_vizwiz_two_pass_unanswerable_check():
    calls = []

    def generate(prompts, images):
        calls.append(len(prompts))
        # The answerable check says "No" for the blurry image, "Yes" otherwise.
        if prompts[0].endswith("known? ASSISTANT:"):
            return ["No, it is blurry.</s>" if "blurry" in p else "Yes" for p in prompts]
        return ["Soup, tomato.</s>" for _ in prompts]

    out = answer_batch(
        generate, ["blurry?", "what?"], ["a.jpg", "b.jpg"], PRESETS["vizwiz_test"], num_patches=1
    )
    assert out[0] == {"check": "No, it is blurry.", "answer": "unanswerable", "raw": "unanswerable"}
    assert out[1] == {"check": "Yes", "answer": "soup", "raw": "Soup, tomato."}
    assert calls == [2, 1]  # the second pass only asks what the first did not settle


def test_score_predictions_overall_and_per_type(vqav2):
    items = load_questions("vqav2", *vqav2)
    result = score_predictions(items, {"11": "Black.", "12": "two"}, variant="official")
    # 11: "black" 6/10 -> 1.0; 12: "2" in 3 of 10 -> 0.9.
    assert result["overall"] == pytest.approx(95.0)
    assert result["per_answer_type"] == pytest.approx({"number": 90.0, "other": 100.0})
    with pytest.raises(VqaDataError, match="no prediction"):
        score_predictions(items, {"11": "black"})
    partial = score_predictions(items, {"11": "black", "99": "x"}, allow_missing=True)
    assert partial["missing"] == 1 and partial["unused_predictions"] == 1
    assert partial["overall"] == pytest.approx(50.0)
    with pytest.raises(VqaDataError, match="EvalAI"):
        score_predictions(load_questions("vqav2", vqav2[0]), {"11": "a", "12": "b"})


def test_evalai_results_files(vqav2, tmp_path):
    items = load_questions("vqav2", vqav2[0])
    assert evalai_results(items, {"11": "black", "12": "2"}, "vqav2") == [
        {"question_id": 11, "answer": "black"},
        {"question_id": 12, "answer": "2"},
    ]
    vizwiz = [{"image": "VizWiz_test_1.jpg", "question": "q?"}]
    vitems = load_questions("vizwiz", _write(tmp_path / "v.json", vizwiz))
    assert evalai_results(vitems, {"VizWiz_test_1.jpg": "unanswerable"}, "vizwiz") == [
        {"image": "VizWiz_test_1.jpg", "answer": "unanswerable"}
    ]


def test_generation_is_resumable_by_question_id(vqav2, tmp_path):
    items = load_questions("vqav2", *vqav2)
    store = ResultsStore(tmp_path / "answers.jsonl")
    store.append([{"id": "11", "answer": "from an earlier run"}])
    factory = lookup_generator({"What color": "Black.", "How many": "Two, maybe three."})
    answers = generate_answers(
        items,
        factory,
        PRESETS["vqav2"],
        store,
        str(tmp_path),
        num_patches=1,
        pool=PoolOptions(num_actors=0),
        progress=False,
    )
    assert answers == {"11": "from an earlier run", "12": "two"}
    reopened = ResultsStore(tmp_path / "answers.jsonl")
    assert reopened.records()["12"]["raw"] == "Two, maybe three." and len(reopened) == 2


def test_results_store_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultsStore(path)
    store.append([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
    store.append([{"id": 1, "v": "c"}])
    with open(path, "a") as f:
        f.write('{"id": "3", "v": "tor')
    again = ResultsStore(path)
    assert again.records()["1"]["v"] == "c" and "3" not in again
    assert again.pending([1, 2, 3, 4]) == ["3", "4"]
    with pytest.raises(KeyError):
        store.append([{"v": "no id"}])


def test_vqa_cli_score_and_errors(vqav2, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("vqa_cli", REPO / "evals" / "vqa.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    preds = _write(
        tmp_path / "p.json",
        [{"question_id": 11, "answer": "black"}, {"question_id": 12, "answer": "2"}],
    )
    base = ["--format", "vqav2", "--questions", str(vqav2[0])]
    assert (
        cli.main(
            [
                "score",
                *base,
                "--annotations",
                str(vqav2[1]),
                "--predictions",
                str(preds),
                "--variant",
                "lmms",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["overall"] == pytest.approx(95.0)
    assert (
        cli.main(["evalai", *base, "--predictions", str(preds), "--out", str(tmp_path / "r.json")])
        == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())[0] == {
        "question_id": 11,
        "answer": "black",
    }
    assert load_predictions(tmp_path / "r.json") == {"11": "black", "12": "2"}
    capsys.readouterr()
    assert cli.main(["score", *base, "--predictions", str(preds)]) == 2  # no annotations
    assert "EvalAI" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "generate",
                *base,
                "--preset",
                "vqav2",
                "--model",
                str(tmp_path),
                "--images",
                str(tmp_path),
                "--results",
                str(tmp_path / "g.jsonl"),
                "--num-actors",
                "0",
            ]
        )
        == 2
    )
    assert "config.json" in capsys.readouterr().err  # not a model artifact
    table = _write(tmp_path / "table.json", {"What color": "Black.", "How many": "2"})
    gen = [
        "generate",
        *base,
        "--preset",
        "vqav2",
        "--answers-table",
        str(table),
        "--images",
        str(tmp_path),
        "--results",
        str(tmp_path / "g.jsonl"),
        "--num-actors",
        "0",
    ]
    assert cli.main(gen) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"id": "11", "answer": "black"},
        {"id": "12", "answer": "2"},
    ]
    assert cli.main(["prompts", *base, "--preset", "vizwiz_test", "--num-patches", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["check"].endswith(
        "What color is the cat?Is the answer can be known? ASSISTANT:"
    )
