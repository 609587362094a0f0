"""The generation server's request parsing and JSON answer, without Ray: every bad request is a
4xx `RequestError` naming its field; uploads are base64 JSON (no multipart parser needed)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from dreamray.model.answer import Answer, AnswerOptions
from dreamray.serving.page import PAGE
from dreamray.serving.protocol import (
    LIMITS,
    MAX_BODY_BYTES,
    MAX_PROMPT_CHARS,
    RequestError,
    answer_payload,
    parse_generate_request,
)


def _png(color="red", size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _body(**fields) -> bytes:
    return json.dumps({"prompt": "a red cat", **fields}).encode()


def _error(body: bytes | str) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_generate_request(body)
    return info.value


def test_a_full_request_parses_into_options_and_images():
    data_url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    request = parse_generate_request(_body(
        images=[{"name": "cat.png", "data": data_url},
                {"name": "raw.png", "data": base64.b64encode(_png("blue")).decode()}],
        mode="image", max_images=2, seed=4, steps=3, guidance=2, image_bias=1.5,
        max_new_tokens=0, top_k=None,
    ))
    assert request.prompt == "a red cat" and request.image_names == ["cat.png", "raw.png"]
    assert [im.getpixel((0, 0)) for im in request.images] == [(255, 0, 0), (0, 0, 255)]
    assert request.options == AnswerOptions(mode="image", max_images=2, seed=4, steps=3,
                                            guidance=2.0, image_bias=1.5, max_new_tokens=0)


def test_defaults_when_only_a_prompt_is_sent():
    request = parse_generate_request(_body())
    assert request.options == AnswerOptions() and request.images == []


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (b"{nope", "body", "not JSON"),
        (b"[1, 2]", "body", "a JSON object expected"),
        (json.dumps({"images": []}).encode(), "prompt", "a string is required"),
        (_body(prompt="  "), "prompt", "empty"),
        (_body(prompt="x" * (MAX_PROMPT_CHARS + 1)), "prompt", "characters, at most"),
        (_body(colour="red"), "colour", "unknown field"),
        (_body(steps="many"), "steps", "a number"),
        (_body(steps=2.5), "steps", "an integer"),
        (_body(steps=0), "steps", ">= 1"),
        (_body(steps=LIMITS["steps"] + 1), "steps", "at most"),
        (_body(do_sample="yes"), "do_sample", "true or false"),
        (_body(mode="poem"), "mode", "one of auto, text, image, interleaved"),
        (_body(mode="image", max_images=0), "max_images", "at least 1 image"),
        (_body(images={"data": "x"}), "images", "a list"),
        (_body(images=[{"name": "a.png"}]), "images[0]", "base64 `data`"),
        (_body(images=[{"name": "a.png", "data": "***"}]), "images[0] (a.png)", "not base64"),
    ],
)
def test_bad_requests_name_their_field(body, field, says):
    err = _error(body)
    assert err.status == 400 and err.field == field and says in err.message
    assert err.payload() == {"error": f"{field}: {err.message}", "field": field}


def test_an_upload_that_is_not_an_image_is_named():
    text = base64.b64encode(b"just some notes").decode()
    err = _error(_body(images=[{"name": "notes.txt", "data": text}]))
    assert err.status == 400 and err.field == "images[0] (notes.txt)"
    assert "not an image" in err.message


def test_an_oversized_body_is_413():
    err = _error(b" " * (MAX_BODY_BYTES + 1))
    assert err.status == 413 and err.field == "body"


def test_the_answer_payload_keeps_order_and_inlines_pngs():
    image = Image.new("RGB", (16, 16), (0, 128, 255))
    answer = Answer("p", ["first", image, "then"], "interleaved", AnswerOptions())
    payload = answer_payload(answer, seconds=1.23456)
    assert [s["type"] for s in payload["segments"]] == ["text", "image", "text"]
    assert payload["mode"] == "interleaved" and payload["seconds"] == 1.235
    src = payload["segments"][1]["src"]
    assert src.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(src.partition(",")[2])))
    assert decoded.format == "PNG" and decoded.getpixel((3, 3)) == (0, 128, 255)


def test_the_page_needs_nothing_from_the_internet():
    assert "http://" not in PAGE and "https://" not in PAGE and "//cdn" not in PAGE
    for element in ('id="prompt"', 'id="images" name="images" type="file"', 'id="answer"'):
        assert element in PAGE
    assert 'fetch("generate"' in PAGE  # relative: works behind any host/port
