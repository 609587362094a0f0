"""Synthetic document sources: MMC4 (JSON lines + image files, and WebDataset tars in both the
OpenFlamingo base64 and the reference's member-image layouts) and InstructMMC4."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

from dreamray.data.schema import (
    KIND_DOCUMENT,
    REASON_EMPTY_INSTRUCTION,
    REASON_IMAGE_BOMB,
    REASON_IMAGE_MISSING,
    REASON_IMAGE_TRUNCATED,
    REASON_IMAGE_UNDECODABLE,
    REASON_INDEX_RANGE,
    REASON_MALFORMED,
    REASON_NO_TEXT,
    make_id,
)
from dreamray.data.synthetic.common import Rng, SourceLayout, Truth, write_bytes
from dreamray.data.synthetic.images import bad_image

IMAGE_FAULTS = (REASON_IMAGE_UNDECODABLE, REASON_IMAGE_TRUNCATED, REASON_IMAGE_BOMB)


def _document(rng: Rng, n_images: int) -> tuple[list[str], list[int]]:
    """Sentences and, per image, the sentence it matches (deliberately not sorted)."""
    texts = [rng.sentence() for _ in range(rng.py.randint(max(2, n_images), 6))]
    return texts, [rng.py.randrange(len(texts)) for _ in range(n_images)]


def mmc4_record(
    texts: list[str], image_names: list[str], matched: list[int], url: str
) -> dict:
    """An MMC4 document record (similarities fixed at 0.3: the converter keeps them as is).

    Args:
        texts: the sentences (`text_list`).
        image_names: per image, its file name.
        matched: per image, the index of the sentence it belongs to.
        url: the document's URL.

    Returns:
        The record.
    """
    infos = [
        {
            "image_name": name,
            "matched_text_index": m,
            "matched_sim": 0.3,
            "raw_url": "http://example.com/i",
        }
        for name, m in zip(image_names, matched, strict=True)
    ]
    return {
        "text_list": texts,
        "image_info": infos,
        "similarity_matrix": [[0.3 for _ in texts] for _ in infos],
        "url": url,
        "could_have_url_duplicate": 0,
    }


def _good_doc(rng: Rng, index: int, name_prefix: str = "") -> tuple[dict, list[bytes]]:
    """An MMC4 record with 1-3 images, plus the images in image_info order."""
    texts, matched = _document(rng, rng.py.randint(1, 3))
    images = [rng.image(index + k) for k in range(len(matched))]
    names = [name_prefix + rng.hex_name() for _ in matched]
    record = mmc4_record(texts, names, matched, f"http://example.com/doc/{index}")
    for info in record["image_info"]:
        info["matched_sim"] = round(rng.py.uniform(0.2, 0.4), 4)
    record["similarity_matrix"] = [
        [round(rng.py.uniform(0.1, 0.4), 4) for _ in texts] for _ in matched
    ]
    return record, images


def expect_document(
    truth: Truth, rid: str, record: dict, images: list[bytes], instruction: str | None = None
) -> None:
    """Expected row: images sorted (stably) by matched_text_index."""
    order = sorted(range(len(images)), key=lambda k: record["image_info"][k]["matched_text_index"])
    truth.expect(
        rid,
        KIND_DOCUMENT,
        record["text_list"],
        [images[k] for k in order],
        [record["image_info"][k]["matched_text_index"] for k in order],
        instruction=instruction,
    )


def _fault_docs(rng: Rng, images_dir: Path, prefix: str = "") -> list[tuple[str, dict | str]]:
    """(reason, record or raw line) for every document-level fault."""
    faults = []
    for reason in IMAGE_FAULTS + (REASON_IMAGE_MISSING,):
        # One good image beside the bad one: kept (minus the bad image) in drop mode.
        record, images = _good_doc(rng, 0, prefix)
        record["image_info"] = record["image_info"][:1]
        write_bytes(images_dir / record["image_info"][0]["image_name"], images[0])
        bad = {"image_name": prefix + rng.hex_name(), "matched_text_index": 0, "matched_sim": 0.3}
        if reason != REASON_IMAGE_MISSING:
            write_bytes(images_dir / bad["image_name"], bad_image(rng.np, reason))
        record["image_info"].append(bad)
        faults.append((reason, record))
    no_text, _ = _good_doc(rng, 0, prefix)
    blank, _ = _good_doc(rng, 0, prefix)
    out_of_range, _ = _good_doc(rng, 0, prefix)
    no_text["text_list"], blank["text_list"] = [], ["  ", "\n"]
    out_of_range["image_info"][0]["matched_text_index"] = len(out_of_range["text_list"])
    no_info = {"text_list": [rng.sentence()], "url": "http://example.com/x"}
    return faults + [
        (REASON_NO_TEXT, no_text),
        (REASON_NO_TEXT, blank),
        (REASON_INDEX_RANGE, out_of_range),
        (REASON_MALFORMED, no_info),
        (REASON_MALFORMED, '{"text_list": ["cut'),
    ]


def _write_jsonl(
    rng: Rng, path: Path, images_dir: Path, docs: int, faults: bool, truth: Truth
) -> None:
    lines = []
    for i in range(docs):
        record, images = _good_doc(rng, i)
        for info, data in zip(record["image_info"], images, strict=True):
            write_bytes(images_dir / info["image_name"], data)
        expect_document(truth, make_id(truth.source, path.stem, i), record, images)
        lines.append(json.dumps(record))
    for reason, record in _fault_docs(rng, images_dir) if faults else []:
        truth.rejects[make_id(truth.source, path.stem, len(lines))] = reason
        lines.append(record if isinstance(record, str) else json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # fixed mtime: byte-identical tars for one seed
    tar.addfile(info, io.BytesIO(data))


def _write_tar(rng: Rng, path: Path, docs: int, inline: bool, faults: bool, truth: Truth) -> None:
    """OpenFlamingo layout (inline base64) or the reference's (`<key>.<stem>.jpg` members)."""
    with tarfile.open(path, "w") as tar:
        for i in range(docs):
            key, (record, images) = f"{path.stem}{i:04d}", _good_doc(rng, i)
            for info, data in zip(record["image_info"], images, strict=True):
                if inline:
                    info["image_base64"] = base64.b64encode(data).decode()
                else:
                    _add_member(tar, f"{key}.{Path(info['image_name']).stem}.jpg", data)
            _add_member(tar, f"{key}.json", json.dumps(record).encode())
            expect_document(truth, make_id(truth.source, path.stem, key), record, images)
        if faults:
            _tar_faults(rng, tar, path.stem, inline, truth)


def _tar_faults(rng: Rng, tar: tarfile.TarFile, stem: str, inline: bool, truth: Truth) -> None:
    record, _ = _good_doc(rng, 0)
    if inline:
        for info in record["image_info"]:
            info["image_base64"] = "***not base64***"
    # Member layout: no image members are written for this document.
    _add_member(tar, f"{stem}bad0.json", json.dumps(record).encode())
    truth.rejects[make_id(truth.source, stem, f"{stem}bad0")] = (
        REASON_IMAGE_UNDECODABLE if inline else REASON_IMAGE_MISSING
    )
    _add_member(tar, f"{stem}bad1.orphan.jpg", rng.image(0))
    truth.rejects[make_id(truth.source, stem, f"{stem}bad1")] = REASON_MALFORMED


def write_mmc4(
    out: Path, seed: int, faults: bool, shards: int = 2, docs: int = 6
) -> tuple[SourceLayout, Truth]:
    """Write `mmc4_core/docs_shard_N_v2.jsonl` + `images/`, and `tars/0000N.tar`.

    Args:
        out: the synthetic root.
        seed: seed.
        faults: plant bad documents.
        shards: JSON-lines shards (and tars: one base64 layout, one member layout).
        docs: good documents per shard.

    Returns:
        The layout (jsonl files then tars as inputs) and the truth.
    """
    source = "mmc4_core"
    rng, truth, root = Rng(seed, source), Truth(source), out / source
    images, inputs = root / "images", []
    for shard in range(shards):
        inputs.append(root / f"docs_shard_{shard}_v2.jsonl")
        _write_jsonl(rng, inputs[-1], images, docs, faults, truth)
    (root / "tars").mkdir(parents=True, exist_ok=True)
    for shard, inline in enumerate((True, False)):
        inputs.append(root / "tars" / f"{shard:05d}.tar")
        _write_tar(rng, inputs[-1], docs // 2, inline, faults, truth)
    return SourceLayout(source, "mmc4", inputs, images), truth


def write_instruct_mmc4(
    out: Path, seed: int, faults: bool, docs: int = 8
) -> tuple[SourceLayout, Truth]:
    """Write `instruct_mmc4/instruct_mmc4.json` + `mmc4-core-raw/` images.

    Args:
        out: the synthetic root.
        seed: seed.
        faults: plant bad records.
        docs: good records.

    Returns:
        The layout and the truth.
    """
    source = "instruct_mmc4"
    rng, truth, root = Rng(seed, source), Truth(source), out / source
    images, path, records = root / "mmc4-core-raw", root / "instruct_mmc4.json", []
    for i in range(docs):
        record, data = _good_doc(rng, i, name_prefix=f"{i % 3:03d}/")
        for info, image in zip(record["image_info"], data, strict=True):
            write_bytes(images / info["image_name"], image)
        instruction = "Write an article about: " + rng.sentence()
        record = {"instruction": instruction, **record}
        expect_document(truth, make_id(source, path.stem, i), record, data, instruction)
        records.append(record)
    if faults:
        planted = [(REASON_EMPTY_INSTRUCTION, {**_good_doc(rng, 0)[0], "instruction": " "})]
        planted += [
            (reason, {"instruction": "Describe.", **record})
            for reason, record in _fault_docs(rng, images, "999/")
            if isinstance(record, dict)
        ]  # a JSON list has no raw broken lines
        for reason, record in planted:
            truth.rejects[make_id(source, path.stem, len(records))] = reason
            records.append(record)
    path.write_text(json.dumps(records, indent=1))
    return SourceLayout(source, "instruct_mmc4", [path], images), truth
