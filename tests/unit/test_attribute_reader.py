"""The attribute reader against the world's truth, its unreadable reasons, and the scores."""

from __future__ import annotations

import io
import json
import random

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dreamray.data.manifest import shard_paths
from dreamray.data.synthetic.common import TRUTH_DIR, sha256
from dreamray.data.world import (
    BACKGROUND,
    WorldSizes,
    WorldSpec,
    build_world,
    render_scene,
    sample_scene,
)
from dreamray.evals.attributes import (
    REASON_NO_FOREGROUND,
    REASON_TOO_SMALL,
    REASON_UNDECODABLE,
    Reading,
    ReadObject,
    read_image,
    score_attributes,
)


def _objects(objs) -> list[tuple[str, str, str]]:
    return sorted((o["color"], o["shape"], o["position"]) for o in objs)


def test_reader_matches_the_truth_files_of_the_converted_world(tmp_path):
    sizes = WorldSizes(pairs=300, documents=1, conversations=1, instructions=1)
    shards = build_world(tmp_path, sizes=sizes, seed=5, use_ray=False)["laion400m"]
    scenes = json.loads((tmp_path / "sources" / TRUTH_DIR / "laion400m.scenes.json").read_text())
    images = [r["images"][0] for p in shard_paths(shards) for r in pq.read_table(p).to_pylist()]
    assert len(images) == 300
    right = 0
    for data in images:
        reading = read_image(data)
        right += reading.reason is None and _objects(vars(o) for o in reading.objects) == _objects(
            scenes[sha256(data)]
        )
    assert right / len(images) >= 0.98


@pytest.mark.parametrize("size", [32, 64, 96])
def test_reader_reads_every_attribute_at_every_size(size):
    spec, rng, right = WorldSpec(image_size=size), random.Random(size), 0
    for _ in range(200):
        scene = sample_scene(rng, spec)
        reading = read_image(render_scene(scene, spec))
        right += _objects(vars(o) for o in reading.objects) == _objects(scene.truth())
    assert right / 200 >= 0.98


def test_unreadable_images_have_reasons():
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    speck = blank.copy()
    speck.putpixel((10, 10), (255, 0, 0))
    assert read_image(b"not an image").reason == REASON_UNDECODABLE
    assert read_image(blank).reason == REASON_NO_FOREGROUND
    assert read_image(speck).reason == REASON_TOO_SMALL
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(buf, "PNG")
    full = read_image(buf.getvalue())
    assert full.objects[0].color == "red" and full.objects[0].shape == "square"


def test_scores_count_unreadable_as_wrong_and_give_chance_levels():
    truth = {"color": "red", "shape": "circle", "position": "left"}
    readings = [
        Reading(
            (ReadObject("red", "circle", "left", 0.1), ReadObject("blue", "square", "top", 0.01))
        ),
        Reading((ReadObject("red", "square", "right", 0.1),)),
        Reading(reason=REASON_NO_FOREGROUND),
        Reading(reason=REASON_NO_FOREGROUND),
    ]
    metrics = score_attributes(readings, [truth] * 4).metrics()
    assert metrics["n"] == 4 and metrics["unreadable"] == {REASON_NO_FOREGROUND: 2}
    assert metrics["color_accuracy"] == 0.5 and metrics["shape_accuracy"] == 0.25
    assert metrics["position_accuracy"] == 0.25
    assert metrics["color_chance"] == pytest.approx(1 / 6)
    assert metrics["shape_chance"] == pytest.approx(1 / 3)
    assert metrics["position_chance"] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="prompt 1: truth lacks"):
        score_attributes(readings[:2], [truth, {"color": "red"}])
    with pytest.raises(ValueError, match="2 readings for 1 prompts"):
        score_attributes(readings[:2], [truth])
