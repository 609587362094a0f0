"""The COCO caption manifest: fixed, seeded, shared by every generation seed."""

from __future__ import annotations

import json

import pytest

from dreamray.evals.captions import (
    ManifestError,
    build_coco_manifest,
    generation_id,
    read_manifest,
    write_manifest,
)


@pytest.fixture
def coco_captions(tmp_path):
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(1, 41)]
    annotations = [
        {"id": 1000 * i + k, "image_id": i, "caption": f" image {i} caption {k} "}
        for i in range(1, 41)
        for k in range(5)
        if i != 40  # image 40 has no caption: never sampled
    ]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_manifest_is_seeded_and_one_caption_per_image(coco_captions):
    a = build_coco_manifest(coco_captions, 10, seed=0)
    b = build_coco_manifest(coco_captions, 10, seed=0)
    c = build_coco_manifest(coco_captions, 10, seed=1)
    assert a.items == b.items and a.items != c.items
    assert len({i.image_id for i in a.items}) == 10 and all(i.image_id != 40 for i in a.items)
    for item in a.items:
        assert item.item_id == f"coco{item.image_id}"
        assert item.caption.startswith(f"image {item.image_id} caption")  # stripped
    assert a.meta["seed"] == 0 and len(a.meta["source_sha256"]) == 64


def test_manifest_round_trip_and_generation_ids(coco_captions, tmp_path):
    manifest = build_coco_manifest(coco_captions, 3, seed=5)
    digest = write_manifest(tmp_path / "m.json", manifest)
    again = read_manifest(tmp_path / "m.json")
    assert again == manifest and len(digest) == 64
    ids = again.generation_ids([42, 43])
    assert (
        ids[0] == generation_id(manifest.items[0].item_id, 42) == f"{ids[0].split('/')[0]}/seed42"
    )
    assert len(ids) == 6 and len(set(ids)) == 6


def test_manifest_errors(coco_captions, tmp_path):
    with pytest.raises(ManifestError, match="only 39 captioned images"):
        build_coco_manifest(coco_captions, 40, seed=0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ManifestError):
        build_coco_manifest(tmp_path / "bad.json", 1, seed=0)
    with pytest.raises(ManifestError):
        read_manifest(tmp_path / "bad.json")
