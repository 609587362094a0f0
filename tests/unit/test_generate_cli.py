"""pipelines/generate.py on a tiny artifact: text-only, image-only and interleaved answers
(answer.md references PNGs that exist), options -> mode, progress bar, and bad input (each a
clear error naming the flag or file, exit code 2, nothing written)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from coco_fixtures import write_artifact  # noqa: E402
from model_fixtures import NUM_QUERIES  # noqa: E402 (sets torch to one thread)

from dreamray.model import answer as ans  # noqa: E402
from dreamray.model import answer_inputs as inputs  # noqa: E402
from dreamray.model import generation as gen  # noqa: E402
from dreamray.model.generation import generate_images  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--max-new-tokens", "4", "--no-progress"]
DRAW = ["--image-bias", "1e4"]  # <dream_start> first: the random model then draws at once
IMAGE_REF = re.compile(r"!\[image (\d+)\]\((image_\d+\.png)\)")


def _cli():
    spec = importlib.util.spec_from_file_location("generate_cli", REPO / "pipelines" /
                                                  "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def artifact(tiny_zoo, tmp_path_factory):
    return write_artifact(tiny_zoo, tmp_path_factory.mktemp("generate") / "artifact")


@pytest.fixture(scope="module")
def model(artifact):
    return inputs.load_model(artifact, "cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(path)
    return path


def _generate(artifact, out: Path, *args: str) -> int:
    return _cli().generate_main(["--model", str(artifact), "--out", str(out), *args])


def _referenced(out: Path) -> list[str]:
    """The PNG names answer.md references, in order; each must exist and decode."""
    text = (out / "answer.md").read_text()
    refs = IMAGE_REF.findall(text)
    assert [int(k) for k, _ in refs] == list(range(1, len(refs) + 1))
    for _, name in refs:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.mode == "RGB"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(name for _, name in refs)
    return [name for _, name in refs]


def _body(out: Path) -> list[str]:
    """answer.md's answer part: the lines after the quoted prompt, blank lines dropped."""
    lines = (out / "answer.md").read_text().splitlines()
    last_quote = max(i for i, line in enumerate(lines) if line.startswith(">"))
    return [line for line in lines[last_quote + 1:] if line.strip()]


def test_text_only_answer(artifact, model, tmp_path, capsys):
    out = tmp_path / "text"
    assert _generate(artifact, out, "--prompt", "describe a red bus", "--mode", "text",
                     *FAST) == 0
    assert "text answer (0 images)" in capsys.readouterr().out
    assert _referenced(out) == []
    md = (out / "answer.md").read_text()
    assert "mode=text" in md and "> describe a red bus" in md
    expected = ans.generate_answer(model, "describe a red bus",
                                   options=ans.AnswerOptions(mode="text", max_new_tokens=4))
    assert expected.text and _body(out) == [expected.text.strip("\n")]


def test_image_only_answer_is_generate_images_with_the_seed(artifact, model, tmp_path):
    out = tmp_path / "image"
    args = ["--prompt", "a red bus", "--mode", "image", "--seed", "3", "--guidance", "2.0"]
    assert _generate(artifact, out, *args, *FAST) == 0
    assert _referenced(out) == ["image_1.png"] and _body(out) == ["![image 1](image_1.png)"]
    (expected,) = generate_images(model, ["a red bus"], num_inference_steps=2, seed=3,
                                  guidance_scale=2.0)
    res = model.stable_diffusion_head.resolution
    with Image.open(out / "image_1.png") as written:
        assert written.size == (res, res)
        assert np.array_equal(np.asarray(written), np.asarray(expected))  # PNG is lossless


def test_interleaved_answer_with_an_input_image(artifact, photo, tmp_path):
    out = tmp_path / "interleaved"
    args = ["--prompt", "look at <image> and go on", "--image", str(photo), "--max-images", "2"]
    assert _generate(artifact, out, *args, *DRAW, *FAST) == 0
    assert _referenced(out) == ["image_1.png", "image_2.png"]
    body = _body(out)
    # the bias draws until the bound, then text continues
    assert body[:2] == ["![image 1](image_1.png)", "![image 2](image_2.png)"] and len(body) == 3
    md = (out / "answer.md").read_text()
    assert "mode=interleaved" in md and "steps=2" in md and f"`{photo}`" in md
    assert "&lt;image&gt;" in md  # the placeholder stays visible in Markdown


def test_a_rerun_replaces_the_answer_and_its_old_pngs(artifact, tmp_path):
    out = tmp_path / "again"
    assert _generate(artifact, out, "--prompt", "a", "--mode", "image", "--max-images", "3",
                     *FAST) == 0
    assert len(_referenced(out)) == 3
    (out / "notes.txt").write_text("mine")
    assert _generate(artifact, out, "--prompt", "a", "--mode", "image", *FAST) == 0
    assert _referenced(out) == ["image_1.png"] and (out / "notes.txt").read_text() == "mine"


def test_image_mode_reads_the_prompt_images(model, photo):
    image = inputs.read_image(photo)
    options = ans.AnswerOptions(mode="image", steps=2, max_images=2, seed=5)
    with_photo = ans.generate_answer(model, "like this", [image], options)
    without = ans.generate_answer(model, "like this", [], options)
    assert len(with_photo.images) == 2
    first, second = (np.asarray(im) for im in with_photo.images)
    assert not np.array_equal(first, second)  # seeds 5 and 6
    assert not np.array_equal(first, np.asarray(without.images[0]))  # the photo conditions it


def test_spelled_out_image_blocks_must_have_their_images(model):
    block = "".join(model.tokenizer.convert_ids_to_tokens(
        model.token_ids.image_block(model.num_patches)))
    with pytest.raises(inputs.AnswerError, match="^prompt: 1 image blocks but 0 images"):
        ans.generate_answer(model, f"see {block} here", [], ans.AnswerOptions(mode="text"))


def test_images_go_in_front_of_a_prompt_without_placeholders():
    assert inputs.place_images("what is it?", 2) == "<image>\n<image>\nwhat is it?"
    assert inputs.place_images("a <image> b", 1) == "a <image> b"
    with pytest.raises(inputs.AnswerError, match=r"^images: the prompt has 2 <image> .* 1 images"):
        inputs.place_images("<image> and <image>", 1)


@pytest.mark.parametrize(
    ("fields", "mode"),
    [
        ({}, "interleaved"),
        ({"max_images": 0}, "text"),
        ({"max_new_tokens": 0}, "image"),
        ({"mode": "text", "max_images": 3}, "text"),
        ({"mode": "image", "max_new_tokens": 5}, "image"),
    ],
)
def test_auto_mode_follows_the_budgets(fields, mode):
    assert ans.resolve_mode(ans.AnswerOptions(**fields)) == mode


def test_image_counts_per_mode():
    assert ans.AnswerOptions(mode="image").num_images == 1
    assert ans.AnswerOptions(mode="interleaved").num_images == ans.DEFAULT_INTERLEAVED_IMAGES
    assert ans.AnswerOptions(mode="text", max_images=3).num_images == 0


def test_progress_bar_counts_tokens_and_denoising_steps(artifact, tmp_path, capsys):
    out = tmp_path / "progress"
    argv = ["--prompt", "a", "--max-images", "1", "--steps", "3", "--max-new-tokens", "2",
            *DRAW]
    assert _generate(artifact, out, *argv) == 0
    err = capsys.readouterr().err
    # 2 chosen tokens (<dream_start> is one) + 3 UNet steps for the image
    assert "generating" in err and "5/5" in err


# -- bad input -----------------------------------------------------------------------------------


def _fails(capsys, artifact_or_dir, out: Path, *args: str) -> str:
    assert _generate(artifact_or_dir, out, *args, *FAST) == 2
    assert not out.exists()  # nothing written
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # (transformers may log before it)
    assert last.startswith("error: ")
    return last


def test_an_input_that_is_not_an_image_is_named(artifact, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    err = _fails(capsys, artifact, tmp_path / "out", "--prompt", "a", "--image", str(notes))
    assert f"error: {notes}: not an image" in err
    missing = tmp_path / "gone.png"
    err = _fails(capsys, artifact, tmp_path / "out", "--prompt", "a", "--image", str(missing))
    assert f"error: {missing}: no such file" in err


def test_a_dir_that_is_not_a_dreamllm_artifact_is_named(tiny_zoo, tmp_path, capsys):
    err = _fails(capsys, tiny_zoo.llm, tmp_path / "out", "--prompt", "a")
    assert err.startswith(f"error: --model: {tiny_zoo.llm} is not a DreamLLM artifact")
    assert "config.json" in err and "'llama'" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _fails(capsys, empty, tmp_path / "out", "--prompt", "a")
    assert err == f"error: --model: {empty} is not a DreamLLM artifact: no config.json"
    err = _fails(capsys, tmp_path / "nowhere", tmp_path / "out", "--prompt", "a")
    assert err == f"error: --model: {tmp_path / 'nowhere'}: no such directory"
    (empty / "config.json").write_text("{not json")
    err = _fails(capsys, empty, tmp_path / "out", "--prompt", "a")
    assert f"error: --model: {empty / 'config.json'}: unreadable JSON" in err


def test_a_prompt_longer_than_the_context_is_named(artifact, model, tmp_path, capsys):
    context = model.llm.config.max_position_embeddings
    err = _fails(capsys, artifact, tmp_path / "out", "--prompt", "word " * context)
    assert err.startswith("error: --prompt: ")
    assert f"context of {context} tokens (max_position_embeddings)" in err
    # an image answer also needs room for the dream block: a prompt can fit text, not images
    fits_text = next(p for n in range(context, 0, -1)
                     if len(gen.prompt_ids(model, p := "a " * n)) == context - 1)
    assert inputs.check_context(model, fits_text, ans.AnswerOptions(mode="text")) == context - 1
    with pytest.raises(inputs.AnswerError, match=f"^prompt: {context - 1} tokens .* \\+ "
                                              f"{NUM_QUERIES + 2} to answer"):
        inputs.check_context(model, fits_text, ans.AnswerOptions(mode="image"))


def test_options_that_do_not_fit_the_mode_are_named(artifact, photo, tmp_path, capsys):
    err = _fails(capsys, artifact, tmp_path / "out", "--prompt", "a", "--mode", "image",
                 "--max-images", "0")
    assert err == "error: --max-images: image answers need at least 1 image"
    assert _generate(artifact, tmp_path / "o", "--prompt", "a", "--steps", "0") == 2
    assert "error: --steps: an integer >= 1, got 0" in capsys.readouterr().err
    err = _fails(capsys, artifact, tmp_path / "out", "--prompt", "<image> and <image>",
                 "--image", str(photo))
    assert err == "error: --image: the prompt has 2 <image> placeholders but 1 images were given"
