"""Trying a model, its inputs: each checked before anything runs, each error naming its field
(`AnswerError`): the model dir (`check_model_dir`, `load_model`), images (`read_image`: a file
or uploaded bytes that PIL cannot read), the prompt's image placeholders (`place_images`) and
its length against the LLM's context (`check_context`). No Ray here (`dreamray.model.answer`
runs the answer).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from dreamray.contracts import CONFIG_FILE
from dreamray.model.tokens import IMAGE

if TYPE_CHECKING:
    from dreamray.model.answer import AnswerOptions


class AnswerError(ValueError):
    """Bad input to an answer; `field` names the option, file or request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_model_dir(path: str | Path) -> Path:
    """A cheap check (no weights read) that a dir holds a DreamLLM: ours or the reference's.

    Raises:
        AnswerError: field ``model``, naming the dir or its ``config.json``.
    """
    from dreamray.model.artifact import DREAMLLM_SECTION
    from dreamray.model.reference_config import is_reference_config

    path = Path(path)
    if not path.is_dir():
        raise AnswerError("model", f"{path}: no such directory")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise AnswerError("model", f"{path} is not a DreamLLM artifact: no {CONFIG_FILE}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnswerError("model", f"{config_file}: unreadable JSON ({err})") from err
    if not isinstance(config, dict) or not (
        DREAMLLM_SECTION in config or is_reference_config(config)
    ):
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise AnswerError(
            "model",
            f"{path} is not a DreamLLM artifact: {config_file} (model_type {kind!r}) has no "
            f"`{DREAMLLM_SECTION}` section and is not the reference's DreamLLM config",
        )
    return path


def load_model(path: str | Path, device: str | None = None) -> Any:
    """`DreamLLM.from_pretrained` with errors that name the dir, on `device`, in eval mode.

    Args:
        path: the artifact dir (our layout or the reference's).
        device: ``cuda``, ``cpu``, ...; None: CUDA when available.

    Raises:
        AnswerError: field ``model``, when the dir is not a loadable DreamLLM artifact.
    """
    import torch

    from dreamray.model.dreamllm import DreamLLM

    path = check_model_dir(path)
    try:
        model = DreamLLM.from_pretrained(path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise AnswerError("model", f"{path} is not a loadable DreamLLM artifact: {err}") from err
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def read_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """An input image, RGB, fully read.

    Args:
        source: a file path, or the bytes of an uploaded file.
        name: how errors name it (default: the path).

    Raises:
        AnswerError: naming the file when it is missing or not an image PIL can read.
    """
    label = name if name is not None else str(source)
    try:
        if isinstance(source, bytes):
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(Path(source))
        image.load()
    except FileNotFoundError as err:
        raise AnswerError(label, "no such file") from err
    except UnidentifiedImageError as err:
        raise AnswerError(label, "not an image (PIL does not recognise its format)") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise AnswerError(label, f"not a readable image ({err})") from err
    return image.convert("RGB")


def place_images(prompt: str, num_images: int, field: str = "images") -> str:
    """The prompt with one ``<image>`` placeholder per image.

    A prompt without placeholders gets them in front (``<image>\\n`` each); a prompt that has
    them must have one per image.

    Raises:
        AnswerError: (`field`) when the placeholders and the images differ in number.
    """
    have = prompt.count(IMAGE)
    if have == 0:
        return f"{IMAGE}\n" * num_images + prompt
    if have != num_images:
        raise AnswerError(field, f"the prompt has {have} {IMAGE} placeholders but "
                                 f"{num_images} images were given")
    return prompt


def context_size(model: Any) -> int | None:
    """The LLM's context (``max_position_embeddings``), if its config has one."""
    return getattr(model.llm.config, "max_position_embeddings", None)


def check_context(model: Any, prompt: str, options: AnswerOptions, num_images: int = 0,
                  field: str = "prompt") -> int:
    """The prompt's token count (BOS and image blocks included), checked against the context.

    Text and interleaved answers need room for one new token; image answers for a DRM block.

    Raises:
        AnswerError: (`field`) when the prompt does not fit, or its image blocks (placeholders
            and spelled-out blocks) are not `num_images`.
    """
    from dreamray.model.generation import prompt_ids

    ids = prompt_ids(model, prompt)
    blocks = ids.count(model.token_ids.im_start)
    if blocks != num_images:
        raise AnswerError(field, f"{blocks} image blocks but {num_images} images")
    used = len(ids)
    room = model.num_queries + 2 if options.resolved_mode == "image" else 1
    limit = context_size(model)
    if limit is not None and used + room > limit:
        raise AnswerError(
            field,
            f"{used} tokens (BOS and image blocks included) + {room} to answer do not fit the "
            f"model's context of {limit} tokens (max_position_embeddings); shorten it",
        )
    return used
