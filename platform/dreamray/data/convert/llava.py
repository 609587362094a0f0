"""LLaVA conversations (LLaVA-Pretrain 558K, LLaVA-1.5 instruct mix) -> unified conversation rows.

A record: `{"id": ..., "image": "rel/path.jpg" (optional; text-only samples have none),
"conversations": [{"from": "human" | "gpt", "value": "<image>\\n..."}, ...]}`. Turn texts are
kept verbatim, placeholders included; roles become `user` / `assistant` and must alternate,
starting with the user, with at least one assistant turn. The i-th `<image>` or
`<dream>` placeholder (in reading order) takes the i-th image, so their counts must match.
"""

from __future__ import annotations

from collections.abc import Iterator

from dreamray.data.convert.base import (
    Item,
    ReadContext,
    Reject,
    conversation_row,
)
from dreamray.data.convert.json_list import JsonListReader
from dreamray.data.images import check_image, read_image_file
from dreamray.data.schema import (
    PLACEHOLDERS,
    REASON_BAD_ROLE,
    REASON_MALFORMED,
    REASON_NO_TEXT,
    REASON_PLACEHOLDER,
    ROLE_ASSISTANT,
    ROLE_USER,
)

ROLE_MAP = {
    "human": ROLE_USER,
    "user": ROLE_USER,
    "gpt": ROLE_ASSISTANT,
    "assistant": ROLE_ASSISTANT,
}


def _turns(rid: str, record: dict) -> tuple[list[str], list[str]] | Reject:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return Reject(rid, REASON_MALFORMED, "conversations missing or not a list of objects")
    texts = [t.get("value") for t in turns]
    if not all(isinstance(v, str) for v in texts):
        return Reject(rid, REASON_MALFORMED, "a turn has no string value")
    if not any(v.strip() for v in texts):
        return Reject(rid, REASON_NO_TEXT)
    speakers = [t.get("from") for t in turns]
    unknown = [s for s in speakers if s not in ROLE_MAP]
    if unknown:
        return Reject(rid, REASON_BAD_ROLE, f"unknown role {unknown[0]!r}")
    roles = [ROLE_MAP[s] for s in speakers]
    # The builder supervises assistant turns of a user/assistant alternation: anything else
    # would be skipped at training time, so it is rejected (and counted) here instead.
    if roles != [ROLE_USER, ROLE_ASSISTANT] * (len(roles) // 2) + [ROLE_USER] * (len(roles) % 2):
        return Reject(rid, REASON_BAD_ROLE, f"roles do not alternate from user: {speakers}")
    if ROLE_ASSISTANT not in roles:
        return Reject(rid, REASON_BAD_ROLE, "no assistant turn")
    return texts, roles


def _image_paths(rid: str, record: dict) -> list[str] | Reject:
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str) and image:
        return [image]
    if isinstance(image, list) and all(isinstance(i, str) and i for i in image):
        return image
    return Reject(rid, REASON_MALFORMED, "image is neither a path nor a list of paths")


def placeholder_turns(texts: list[str]) -> list[int]:
    """The turn index of every image placeholder, in reading order.

    Args:
        texts: the turn texts.

    Returns:
        One turn index per `<image>` / `<dream>` occurrence.
    """
    after = []
    for turn, text in enumerate(texts):
        found = []
        for tag in PLACEHOLDERS:
            start = text.find(tag)
            while start != -1:
                found.append(start)
                start = text.find(tag, start + len(tag))
        after.extend([turn] * len(found))
    return after


def convert_record(rid: str, record: dict, ctx: ReadContext) -> Iterator[Item]:
    """Convert one LLaVA record.

    Args:
        rid: row id.
        record: the LLaVA record.
        ctx: read context (`images` = image root).

    Yields:
        Exactly one conversation row or Reject.
    """
    turns = _turns(rid, record)
    paths = _image_paths(rid, record)
    for bad in (turns, paths):
        if isinstance(bad, Reject):
            yield bad
            return
    texts, roles = turns
    after = placeholder_turns(texts)
    if len(after) != len(paths):
        yield Reject(rid, REASON_PLACEHOLDER, f"{len(after)} placeholders, {len(paths)} images")
        return
    images = []
    for rel in paths:
        data, reason = read_image_file(ctx.images, rel)
        reason = reason or check_image(data, ctx.max_pixels)
        if reason is not None:
            yield Reject(rid, reason, rel)
            return
        images.append(data)
    yield conversation_row(rid, ctx.source, texts, roles, images, after)


READER = JsonListReader("llava", convert_record)
