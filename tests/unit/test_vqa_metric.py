"""VQA normalisation and soft accuracy, on hand-worked cases for every variant."""

from __future__ import annotations

import pytest

from dreamray.metrics.vqa import (
    VARIANTS,
    VqaAnswersError,
    evalai_normalize,
    normalize_answer,
    process_punctuation,
    summarize_accuracy,
    vqa_accuracy,
)


def ten(*pairs: tuple[str, int]) -> list[str]:
    answers = [a for a, k in pairs for _ in range(k)]
    assert len(answers) == 10
    return answers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number words to digits (after lowercasing)
        ("none", "0"),
        ("the dog", "dog"),  # articles dropped
        ("A Red Car", "red car"),
        ("isnt", "isn't"),  # contractions get their apostrophe
        ("wont", "won't"),
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # ... one followed by a digit stays
        ("1,000", "1000"),  # digit,digit: every mark deleted, not spaced
        ("red,white", "red white"),  # otherwise an untouched mark becomes a space
        ("red, white", "red white"),  # a mark touching a space is deleted
        ("x-ray", "x ray"),
        ("  hot dog!\n", "hot dog"),
        ("U.S.A.", "usa"),
    ],
)
def test_official_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_step_alone_keeps_words():
    assert process_punctuation("Two dogs!") == "Two dogs "
    assert process_punctuation("yes.") == "yes"


def test_evalai_normalisation_of_the_reference():
    # The reference's extra word-tokenise pass: lowercase, drop , and ?, split 's.
    assert evalai_normalize("The man's Hat?") == "man 's hat"
    assert evalai_normalize("red,white") == "redwhite"
    assert evalai_normalize("Two") == "2"


def test_partial_agreement_one_two_three_thirds():
    # k matching answers out of 10: leaving a match out leaves k-1, else k; min(., 3)/3.
    # k=1: (9 * 1/3 + 1 * 0) / 10 = 0.3
    assert vqa_accuracy("cat", ten(("cat", 1), ("dog", 9))) == pytest.approx(0.3)
    # k=2: (8 * 2/3 + 2 * 1/3) / 10 = 0.6
    assert vqa_accuracy("cat", ten(("cat", 2), ("dog", 8))) == pytest.approx(0.6)
    # k=3: (7 * 1 + 3 * 2/3) / 10 = 0.9
    assert vqa_accuracy("cat", ten(("cat", 3), ("dog", 7))) == pytest.approx(0.9)
    # k=4: every subset still has 3 matches
    assert vqa_accuracy("cat", ten(("cat", 4), ("dog", 6))) == pytest.approx(1.0)
    assert vqa_accuracy("bird", ten(("cat", 4), ("dog", 6))) == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_numbers_articles_contractions_every_variant(variant):
    mixed = ten(("2", 3), ("3", 7))
    assert vqa_accuracy("two", mixed, variant) == pytest.approx(0.9)
    assert vqa_accuracy("The 2", mixed, variant) == pytest.approx(0.9)
    contractions = ten(("isn't", 5), ("no", 5))
    assert vqa_accuracy("isnt", contractions, variant) == pytest.approx(1.0)


def test_yes_with_period_official_depends_on_agreement():
    mixed = ten(("yes", 9), ("no", 1))
    unanimous = ten(("yes", 10))
    assert vqa_accuracy("yes.", mixed, "official_2021") == pytest.approx(1.0)
    # The 2021 official evaluator normalises nothing but whitespace when all 10 agree.
    assert vqa_accuracy("yes.", unanimous, "official_2021") == 0.0
    assert vqa_accuracy("Yes", unanimous, "official_2021") == 0.0
    assert vqa_accuracy(" yes\n", unanimous, "official_2021") == pytest.approx(1.0)
    for variant in ("official", "lmms", "dreamllm", "dreamllm_substring"):
        assert vqa_accuracy("yes.", unanimous, variant) == pytest.approx(1.0), variant


def test_official_normalises_answers_by_punctuation_only():
    answers = ten(("two", 3), ("three", 7))
    # The prediction becomes "2" but the answers keep "two": no match in the pre-2021 evaluator.
    assert vqa_accuracy("two", answers, "official") == 0.0
    assert vqa_accuracy("two", answers, "official_2021") == pytest.approx(0.9)
    assert vqa_accuracy("two", answers, "lmms") == pytest.approx(0.9)


def test_punctuation_inside_numbers():
    answers = ten(("1,000", 4), ("1000", 6))
    # Mixed answers: both spellings normalise to "1000", all 10 match.
    for variant in ("official", "official_2021"):
        assert vqa_accuracy("1,000", answers, variant) == pytest.approx(1.0)
        assert vqa_accuracy("3.5", ten(("3.5", 3), ("4", 7)), variant) == pytest.approx(0.9)
        assert vqa_accuracy("35", ten(("3.5", 3), ("4", 7)), variant) == 0.0


def test_dreamllm_variants_exact_and_substring():
    answers = ten(("red", 3), ("red and white", 7))
    assert vqa_accuracy("red and white", answers, "dreamllm") == pytest.approx(1.0)
    assert vqa_accuracy("red white", answers, "dreamllm") == 0.0
    # Substring: "red white" contains "red" (0.9) -> the best containing answer's score.
    assert vqa_accuracy("red white", answers, "dreamllm_substring") == pytest.approx(0.9)
    assert vqa_accuracy("white", answers, "dreamllm_substring") == pytest.approx(1.0)
    # The reference's word-tokenise pass drops ? and splits 's before the official steps.
    assert vqa_accuracy("man's?", ten(("man 's", 3), ("dog", 7)), "dreamllm") == pytest.approx(0.9)


def test_not_ten_answers_and_unknown_variant():
    with pytest.raises(VqaAnswersError, match="10 human answers, got 9"):
        vqa_accuracy("yes", ["yes"] * 9)
    with pytest.raises(ValueError, match="unknown VQA accuracy variant"):
        vqa_accuracy("yes", ["yes"] * 10, variant="loose")


def test_summary_overall_and_per_answer_type():
    summary = summarize_accuracy([1.0, 0.0, 0.6, 0.3], ["yes/no", "yes/no", "other", None])
    assert summary["overall"] == pytest.approx(47.5)
    assert summary["n"] == 4
    assert summary["per_answer_type"] == pytest.approx({"other": 60.0, "yes/no": 50.0})
    with pytest.raises(ValueError):
        summarize_accuracy([])
