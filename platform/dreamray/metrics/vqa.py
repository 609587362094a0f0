"""VQA soft accuracy and its answer normalisations (pure: stdlib only).

The accuracy of one prediction against the 10 human answers is the mean, over the 10 subsets
that leave one human answer out, of min(#matches in the other 9 / 3, 1), with exact string match
after normalisation. The variants differ only in which side is normalised and how:

- `official` (the default): GT-Vision-Lab/VQA `vqaEval.py` as the VQA papers of 2016-2021
  scored with it (458a8b2): the prediction always gets every step; the answers get the
  punctuation step only, and only when the 10 are not all identical. This is the behaviour the
  project's issue specifies ("yes." scores like "yes").
- `official_2021`: the same file after its last change (a013f00, 2021-03-11, "Fixed processing
  answers bug"). Both sides have newlines/tabs turned into spaces and are stripped; only when the
  10 answers are not all identical do both the answers and the prediction get the punctuation
  and digit/article/contraction steps (so "yes." scores 0 against ten "yes").
- `lmms`: every step on both sides, always.
- `dreamllm`: the reference's `EvalAIAnswerProcessor` on both sides, always (it first lowercases,
  drops every `,` and `?` and splits `'s`). Exact match: the substring test in the reference's
  `Accuracy_ANLS_Eval.py` is commented out in the released code.
- `dreamllm_substring`: that commented-out test switched on: the best score of a normalised
  answer that contains the prediction or is contained in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NUM_ANSWERS = 10
VARIANTS = ("official", "official_2021", "lmms", "dreamllm", "dreamllm_substring")

_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")  # fmt: skip
# The evaluator's "period strip": a period not followed by a digit. Its leading `(?!<=\d)` is a
# lookahead (a mistyped lookbehind) that always holds; kept so the pattern reads the same.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The evaluator calls `periodStrip.sub("", text, re.UNICODE)`: the third positional argument of
# Pattern.sub is `count`, so at most int(re.UNICODE) == 32 periods are removed. Reproduced.
_PERIOD_STRIP_COUNT = int(re.UNICODE)

# The official contraction table: "missing apostrophe" spelling -> canonical spelling. Lookups
# happen after lowercasing, so the capitalised keys never match; they are kept to stay identical.
_CONTRACTION_PAIRS = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't
couldn'tve couldn't've  couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't
hadnt hadn't  hadnt've hadn't've  hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd
hed've he'd've  he'dve he'd've  hes he's  howd how'd  howll how'll  hows how's  Id've I'd've
I'dve I'd've  Im I'm  Ive I've  isnt isn't  itd it'd  itd've it'd've  it'dve it'd've
itll it'll  let's let's  maam ma'am  mightnt mightn't  mightnt've mightn't've
mightn'tve mightn't've  mightve might've  mustnt mustn't  mustve must've  neednt needn't
notve not've  oclock o'clock  oughtnt oughtn't  ow's'at 'ow's'at  'ows'at 'ow's'at
'ow'sat 'ow's'at  shant shan't  shed've she'd've  she'dve she'd've  she's she's
shouldve should've  shouldnt shouldn't  shouldnt've shouldn't've  shouldn'tve shouldn't've
somebody'd somebodyd  somebodyd've somebody'd've  somebody'dve somebody'd've
somebodyll somebody'll  somebodys somebody's  someoned someone'd  someoned've someone'd've
someone'dve someone'd've  someonell someone'll  someones someone's  somethingd something'd
somethingd've something'd've  something'dve something'd've  somethingll something'll
thats that's  thered there'd  thered've there'd've  there'dve there'd've  therere there're
theres there's  theyd they'd  theyd've they'd've  they'dve they'd've  theyll they'll
theyre they're  theyve they've  twas 'twas  wasnt wasn't  wed've we'd've  we'dve we'd've
weve we've  werent weren't  whatll what'll  whatre what're  whats what's  whatve what've
whens when's  whered where'd  wheres where's  whereve where've  whod who'd  whod've who'd've
who'dve who'd've  wholl who'll  whos who's  whove who've  whyll why'll  whyre why're
whys why's  wont won't  wouldve would've  wouldnt wouldn't  wouldnt've wouldn't've
wouldn'tve wouldn't've  yall y'all  yall'll y'all'll  y'allll y'all'll  yall'd've y'all'd've
y'alld've y'all'd've  y'all'dve y'all'd've  youd you'd  youd've you'd've  you'dve you'd've
youll you'll  youre you're  youve you've
"""
_TOKENS = _CONTRACTION_PAIRS.split()
CONTRACTIONS = dict(zip(_TOKENS[0::2], _TOKENS[1::2], strict=True))


class VqaAnswersError(ValueError):
    """A question whose human answers are not exactly 10."""


def normalize_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip (the evaluator's first step)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation step.

    Each listed mark is deleted when it touches a space somewhere in the text or when the text
    has a digit-comma-digit group, and becomes a space otherwise; then periods not followed by a
    digit are deleted (so `3.5` keeps its period and `yes.` loses it).

    Args:
        text: the answer.

    Returns:
        The answer with the punctuation rules applied.
    """
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _PUNCTUATION:
        # The tests look at the original text, not at the partially processed one.
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official word step: lowercase, number words to digits, drop articles, contractions.

    Args:
        text: the answer (after the punctuation step).

    Returns:
        The words re-joined with single spaces.
    """
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Every official step: whitespace, punctuation, digits/articles/contractions."""
    return process_digit_article(process_punctuation(normalize_whitespace(text)))


def evalai_normalize(text: str) -> str:
    """The reference's `EvalAIAnswerProcessor`: a word-tokenise pass, then every official step.

    The extra first pass lowercases, deletes every `,` and `?` and turns `'s` into ` 's`.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of min(#exact matches / 3, 1); no normalisation."""
    matches = sum(1 for a in answers if a == prediction)
    # Leaving out a matching answer leaves matches - 1 in the other nine; any other, matches.
    total = sum(min(1.0, (matches - (a == prediction)) / 3.0) for a in answers)
    return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str], variant: str = "official") -> float:
    """VQA soft accuracy of one prediction against the 10 human answers.

    Args:
        prediction: the model's answer (after the benchmark's post-processing).
        answers: exactly 10 human answers, as in the annotation file.
        variant: one of `VARIANTS` (see the module docstring).

    Returns:
        The accuracy in [0, 1].

    Raises:
        VqaAnswersError: not exactly 10 answers.
        ValueError: an unknown variant.
    """
    if len(answers) != NUM_ANSWERS:
        raise VqaAnswersError(f"VQA accuracy needs {NUM_ANSWERS} human answers, got {len(answers)}")
    try:
        score = _VARIANT_SCORERS[variant]
    except KeyError:
        raise ValueError(
            f"unknown VQA accuracy variant {variant!r}; known: {list(VARIANTS)}"
        ) from None
    return score(prediction, list(answers))


def _score_official_2021(prediction: str, answers: list[str]) -> float:
    pred, gts = normalize_whitespace(prediction), [normalize_whitespace(a) for a in answers]
    if len(set(gts)) > 1:
        pred, gts = normalize_answer(pred), [normalize_answer(a) for a in gts]
    return leave_one_out_accuracy(pred, gts)


def _score_official(prediction: str, answers: list[str]) -> float:
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    return leave_one_out_accuracy(normalize_answer(prediction), answers)


def _score_lmms(prediction: str, answers: list[str]) -> float:
    return leave_one_out_accuracy(
        normalize_answer(prediction), [normalize_answer(a) for a in answers]
    )


def _score_dreamllm(prediction: str, answers: list[str]) -> float:
    return leave_one_out_accuracy(
        evalai_normalize(prediction), [evalai_normalize(a) for a in answers]
    )


def _score_dreamllm_substring(prediction: str, answers: list[str]) -> float:
    pred, gts = evalai_normalize(prediction), [evalai_normalize(a) for a in answers]
    candidates = {g for g in gts if g in pred or pred in g}
    return max([leave_one_out_accuracy(g, gts) for g in candidates], default=0.0)


_VARIANT_SCORERS = {
    "official": _score_official,
    "official_2021": _score_official_2021,
    "lmms": _score_lmms,
    "dreamllm": _score_dreamllm,
    "dreamllm_substring": _score_dreamllm_substring,
}


def summarize_accuracy(
    scores: Sequence[float], answer_types: Sequence[str | None] | None = None
) -> dict[str, object]:
    """Overall and per-answer-type accuracy, in percent.

    Args:
        scores: per-question accuracies in [0, 1].
        answer_types: per-question answer type (`yes/no`, `number`, ...) or None where unknown.

    Returns:
        `{"overall": float, "n": int, "per_answer_type": {type: float}}` (percent, unrounded).

    Raises:
        ValueError: no scores, or answer_types of another length.
    """
    if not scores:
        raise ValueError("no questions to summarise")
    if answer_types is not None and len(answer_types) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(answer_types)} answer types")
    by_type: dict[str, list[float]] = {}
    for score, kind in zip(scores, answer_types or [None] * len(scores), strict=True):
        if kind is not None:
            by_type.setdefault(kind, []).append(score)
    return {
        "overall": 100.0 * sum(scores) / len(scores),
        "n": len(scores),
        "per_answer_type": {k: 100.0 * sum(v) / len(v) for k, v in sorted(by_type.items())},
    }
