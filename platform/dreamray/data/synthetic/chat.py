"""Synthetic conversation sources: LLaVA-Pretrain (558K layout) and LLaVA-1.5 instruct (mix665k
layout), each a JSON list plus an image folder."""

from __future__ import annotations

import json
from pathlib import Path

from dreamray.data.convert.llava import ROLE_MAP, placeholder_turns
from dreamray.data.schema import (
    KIND_CONVERSATION,
    REASON_BAD_ROLE,
    REASON_IMAGE_BOMB,
    REASON_IMAGE_MISSING,
    REASON_IMAGE_TRUNCATED,
    REASON_IMAGE_UNDECODABLE,
    REASON_MALFORMED,
    REASON_NO_TEXT,
    REASON_PLACEHOLDER,
    make_id,
)
from dreamray.data.synthetic.common import Rng, SourceLayout, Truth, write_bytes
from dreamray.data.synthetic.images import bad_image

IMAGE_FAULTS = (REASON_IMAGE_UNDECODABLE, REASON_IMAGE_TRUNCATED, REASON_IMAGE_BOMB)
LAYOUTS = {
    # source: (json file name, image sub-folder pattern, turns per conversation)
    "llava_pretrain": ("blip_laion_cc_sbu_558k.json", "{shard:05d}/{id}.jpg", 1),
    "llava_instruct": ("llava_v1_5_mix665k.json", "coco/train2017/{id}.jpg", 3),
}


def _turns(rng: Rng, rounds: int, with_image: bool) -> list[dict]:
    turns = []
    for r in range(rounds):
        question = rng.sentence(3, 8).rstrip(".") + "?"
        if r == 0 and with_image:
            # LLaVA puts the placeholder before or after the first question.
            question = f"<image>\n{question}" if rng.py.random() < 0.5 else f"{question}\n<image>"
        turns += [
            {"from": "human", "value": question},
            {"from": "gpt", "value": rng.sentence(6, 20)},
        ]
    return turns


def expect_conversation(truth: Truth, rid: str, record: dict, images: list[bytes]) -> None:
    texts = [t["value"] for t in record["conversations"]]
    roles = [ROLE_MAP[t["from"]] for t in record["conversations"]]
    truth.expect(rid, KIND_CONVERSATION, texts, images, placeholder_turns(texts), roles=roles)


def _fault_records(rng: Rng, root: Path, pattern: str) -> list[tuple[str, object]]:
    def with_image(name: str, data: bytes | None) -> dict:
        rel = pattern.format(shard=999, id=name)
        if data is not None:
            write_bytes(root / rel, data)
        return {"id": name, "image": rel, "conversations": _turns(rng, 1, True)}

    planted = [(r, with_image(f"bad_{r}", bad_image(rng.np, r))) for r in IMAGE_FAULTS]
    planted.append((REASON_IMAGE_MISSING, with_image("absent", None)))
    no_tag = with_image("no_tag", rng.image(0))
    no_tag["conversations"][0]["value"] = no_tag["conversations"][0]["value"].replace("<image>", "")
    extra_tag = {"id": "extra_tag", "conversations": _turns(rng, 1, True)}  # no image key
    bad_role = with_image("bad_role", rng.image(1))
    bad_role["conversations"][1]["from"] = "system"
    gpt_first = with_image("gpt_first", rng.image(2))
    gpt_first["conversations"].reverse()
    return planted + [
        (REASON_PLACEHOLDER, no_tag),
        (REASON_PLACEHOLDER, extra_tag),
        (REASON_BAD_ROLE, bad_role),
        (REASON_BAD_ROLE, gpt_first),
        (REASON_NO_TEXT, {"id": "empty", "conversations": []}),
        (REASON_MALFORMED, {"id": "no_conversations", "image": "x.jpg"}),
        (REASON_MALFORMED, ["not", "an", "object"]),
    ]


def write_llava(
    out: Path, source: str, seed: int, faults: bool, rows: int = 12
) -> tuple[SourceLayout, Truth]:
    """Write a LLaVA JSON list and its image folder under `out/<source>/`.

    llava_instruct gets multi-turn conversations and every fourth one text-only (no image), as
    in the mix665k file.

    Args:
        out: the synthetic root.
        source: llava_pretrain | llava_instruct.
        seed: seed.
        faults: plant bad records.
        rows: good records.

    Returns:
        The layout and the truth.
    """
    name, pattern, rounds = LAYOUTS[source]
    rng, truth, root = Rng(seed, source), Truth(source), out / source
    images, path, records = root / "images", root / name, []
    for i in range(rows):
        sample_id = f"{rng.py.randrange(10**9):09d}"
        with_image = source == "llava_pretrain" or i % 4 != 3
        record = {
            "id": sample_id,
            "conversations": _turns(rng, rng.py.randint(1, rounds), with_image),
        }
        data = [rng.image(i)] if with_image else []
        if with_image:
            record = {
                "id": sample_id,
                "image": pattern.format(shard=i // 8, id=sample_id),
                "conversations": record["conversations"],
            }
            write_bytes(images / record["image"], data[0])
        expect_conversation(truth, make_id(source, path.stem, i), record, data)
        records.append(record)
    for reason, record in _fault_records(rng, images, pattern) if faults else []:
        truth.rejects[make_id(source, path.stem, len(records))] = reason
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return SourceLayout(source, "llava", [path], images), truth
