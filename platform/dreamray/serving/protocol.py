"""The generation server's HTTP protocol, without Ray or a web framework (unit-testable).

Request: ``POST /generate`` with a JSON body::

    {"prompt": "a red cat", "images": [{"name": "cat.png", "data": "<base64 or data: URL>"}],
     "mode": "auto", "max_new_tokens": 64, "max_images": 1, "seed": 0, "steps": 50,
     "guidance": 7.5, "scheduler": "ddpm", "negative_prompt": null, "image_bias": 0.0,
     "do_sample": false, "temperature": 1.0, "top_k": null}

Only ``prompt`` is required; the other fields are `AnswerOptions`' (null: its default). Uploaded
images travel as base64 in the JSON (the page's JS reads the files), so no multipart parser is
needed. Response: ``{"mode": ..., "segments": [{"type": "text", "text": ...}, {"type": "image",
"src": "data:image/png;base64,...", "width": W, "height": H}], "seconds": ...}``.

Bad requests raise `RequestError` (a status, the field at fault and a message) that the server
answers as ``{"error": ..., "field": ...}`` with that status; the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from dreamray.model.answer import Answer, AnswerOptions, png_bytes
from dreamray.model.answer_inputs import AnswerError, read_image

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_IMAGES_IN = 8
MAX_PROMPT_CHARS = 100_000  # far over any context; keeps tokenising a huge body off the server
# Bounds a page visitor cannot exceed (the CLI has none).
LIMITS = {"max_new_tokens": 2048, "max_images": 8, "steps": 500}
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(AnswerOptions))
_INTS = {"max_new_tokens", "max_images", "seed", "steps", "top_k"}
_FLOATS = {"guidance", "image_bias", "temperature"}
_STRINGS = {"mode", "scheduler", "negative_prompt"}
_BOOLS = {"do_sample"}


class RequestError(ValueError):
    """A request the server refuses: `status` (4xx), the `field` at fault, a message."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def payload(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": str(self), "field": self.field}

    @classmethod
    def of(cls, err: AnswerError, status: int = 400) -> RequestError:
        """The request error for an answer's input error (same field)."""
        return cls(err.field, err.message, status)


@dataclass
class GenerateRequest:
    """A parsed, checked ``/generate`` request."""

    prompt: str
    images: list[Image.Image]
    image_names: list[str]
    options: AnswerOptions


def parse_generate_request(body: bytes | str) -> GenerateRequest:
    """Parse and check a ``/generate`` body.

    Raises:
        RequestError: 413 for a body over `MAX_BODY_BYTES`, else 400, naming the field: not
            JSON, an unknown field, a wrong type, a value out of bounds, an upload that is not
            base64 or not an image.
    """
    if len(body) > MAX_BODY_BYTES:
        raise RequestError("body", f"{len(body)} bytes, over the {MAX_BODY_BYTES} limit", 413)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError("body", f"not JSON ({err})") from err
    if not isinstance(data, dict):
        raise RequestError("body", f"a JSON object expected, got {type(data).__name__}")
    unknown = sorted(set(data) - {"prompt", "images", *OPTION_FIELDS})
    if unknown:
        raise RequestError(unknown[0], f"unknown field (known: prompt, images, "
                                       f"{', '.join(OPTION_FIELDS)})")
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError("prompt", f"a string is required, got {_kind(prompt)}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError("prompt", f"{len(prompt)} characters, at most {MAX_PROMPT_CHARS} on "
                                     "this server (and far more than the model's context)")
    images, names = _images(data.get("images"))
    if not prompt.strip() and not images:
        raise RequestError("prompt", "empty (write a prompt or upload an image)")
    options = {k: _option(k, data[k]) for k in OPTION_FIELDS if data.get(k) is not None}
    try:
        parsed = AnswerOptions(**options)
        parsed.resolved_mode  # noqa: B018 (checks the budgets against the mode)
    except AnswerError as err:
        raise RequestError.of(err) from err
    return GenerateRequest(prompt, images, names, parsed)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _option(name: str, value: Any) -> Any:
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise RequestError(name, f"true or false, got {_kind(value)}")
        return value
    if name in _STRINGS:
        if not isinstance(value, str):
            raise RequestError(name, f"a string, got {_kind(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(name, f"a number, got {_kind(value)}")
    if name in _INTS:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(name, f"an integer, got {value!r}")
        value = int(value)
        if name in LIMITS and value > LIMITS[name]:
            raise RequestError(name, f"at most {LIMITS[name]} on this server, got {value}")
        return value
    return float(value)


def _images(value: Any) -> tuple[list[Image.Image], list[str]]:
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise RequestError("images", f"a list of {{name, data}} objects, got {_kind(value)}")
    if len(value) > MAX_IMAGES_IN:
        raise RequestError("images", f"{len(value)} uploads, at most {MAX_IMAGES_IN}")
    images, names = [], []
    for i, item in enumerate(value):
        field = f"images[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("data"), str):
            raise RequestError(field, "an object with a base64 `data` string expected")
        name = item.get("name") if isinstance(item.get("name"), str) else f"upload {i + 1}"
        label = f"{field} ({name})"
        raw = item["data"]
        if raw.startswith("data:"):
            raw = raw.partition(",")[2]
        try:
            content = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(label, f"`data` is not base64 ({err})") from err
        try:
            images.append(read_image(content, label))
        except AnswerError as err:
            raise RequestError.of(err) from err
        names.append(name)
    return images, names


def png_data_url(image: Image.Image) -> str:
    """An image as a ``data:image/png;base64,...`` URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def answer_payload(answer: Answer, seconds: float | None = None) -> dict[str, Any]:
    """The JSON response for an answer: its segments in order, images as PNG data URLs."""
    segments: list[dict[str, Any]] = []
    for segment in answer.segments:
        if isinstance(segment, str):
            segments.append({"type": "text", "text": segment})
        else:
            segments.append({"type": "image", "src": png_data_url(segment),
                             "width": segment.width, "height": segment.height})
    out: dict[str, Any] = {"mode": answer.mode, "segments": segments}
    if seconds is not None:
        out["seconds"] = round(seconds, 3)
    return out
