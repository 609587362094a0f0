"""The shapes world: validated parameters, deterministic sources that the converters read
exactly, text that states the scene's truth, and eval sets in the benchmarks' formats."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

from dreamray.data.manifest import shard_paths
from dreamray.data.schema import SOURCES
from dreamray.data.synthetic import LAYOUT_FILE, read_truth
from dreamray.data.synthetic.common import TRUTH_DIR, sha256
from dreamray.data.synthetic.verify import compare_with_truth
from dreamray.data.world import (
    PALETTE,
    WorldError,
    WorldSizes,
    WorldSpec,
    build_world,
    render_scene,
    sample_scene,
    write_world_sources,
)
from dreamray.data.world.sources import DRAWN_OBJECTS
from dreamray.data.world.text import PLACES, caption, questions
from dreamray.evals.captions import build_coco_manifest
from dreamray.evals.vqa_data import load_questions
from dreamray.evals.world_sets import read_world_truth, write_world_evals

SMALL = WorldSizes(pairs=24, documents=8, conversations=24, instructions=24)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"colors": ("red", "teal")}, "teal"),
        ({"shapes": ("circle", "hexagon")}, "hexagon"),
        ({"positions": ("left", "left")}, "positions"),
        ({"colors": ()}, "colors"),
        ({"image_size": 16}, "image_size 16"),
        ({"image_size": 512}, "image_size 512"),
        ({"max_objects": 4}, "max_objects 4"),
        ({"max_objects": 2, "positions": ("left",)}, "max_objects 2"),
    ],
)
def test_bad_world_parameters_are_named(kwargs, named):
    with pytest.raises(WorldError, match=named):
        WorldSpec(**kwargs)


def test_bad_sizes_and_object_counts_are_named():
    with pytest.raises(WorldError, match="sizes.pairs 0"):
        WorldSizes(pairs=0)
    with pytest.raises(WorldError, match="num_objects 3"):
        sample_scene(random.Random(0), WorldSpec(max_objects=2), num_objects=3)


def test_scenes_are_deterministic_and_respect_the_spec():
    spec = WorldSpec(colors=("red", "blue"), shapes=("square",), max_objects=2, image_size=48)
    first = [sample_scene(random.Random(7), spec) for _ in range(3)]
    again = [sample_scene(random.Random(7), spec) for _ in range(3)]
    assert first == again
    assert render_scene(first[0], spec).tobytes() == render_scene(again[0], spec).tobytes()
    scenes = [sample_scene(random.Random(i), spec) for i in range(50)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.color for o in objects} == {"red", "blue"} and {o.shape for o in objects} == {
        "square"
    }
    assert all(len({o.position for o in s.objects}) == len(s.objects) <= 2 for s in scenes)
    assert render_scene(scenes[0], spec).size == (48, 48)


def test_text_states_the_truth():
    rng, spec = random.Random(3), WorldSpec()
    for _ in range(100):
        scene = sample_scene(rng, spec)
        text = caption(scene, rng).lower()
        for obj in scene.objects:
            assert f"{obj.size} {obj.color} {obj.shape} {PLACES[obj.position]}" in text
        for qa in questions(scene):
            matching = [
                o
                for o in scene.objects
                if o.shape in qa.question or PLACES[o.position] in qa.question
            ]
            if qa.answer_type == "color":
                assert [o.color for o in matching] == [qa.answer]
            elif qa.answer_type == "position":
                assert [o.position for o in matching] == [qa.answer]
            elif qa.answer_type == "shape":
                assert qa.answer in {o.shape for o in matching}
            else:
                assert qa.answer == ("zero", "one", "two", "three")[len(scene.objects)]


def test_world_sources_convert_exactly_and_carry_scene_truth(tmp_path):
    dirs = build_world(tmp_path, sizes=SMALL, seed=1, use_ray=False)
    assert sorted(dirs) == sorted(SOURCES)
    for source, path in dirs.items():
        assert compare_with_truth(path, read_truth(tmp_path / "sources", source)) == []
        scenes = json.loads(
            (tmp_path / "sources" / TRUTH_DIR / f"{source}.scenes.json").read_text()
        )
        images = [
            b for p in shard_paths(path) for r in pq.read_table(p).to_pylist() for b in r["images"]
        ]
        assert images and {sha256(b) for b in images} == set(scenes), source
        assert all(o["color"] in PALETTE for objs in scenes.values() for o in objs)
        counts = {len(objs) for objs in scenes.values()}
        # what a stage may learn to draw is what the world zoo's UNet can draw: one object
        assert counts == ({1, 2, 3} if source.startswith("llava") else {DRAWN_OBJECTS}), source


def test_world_sources_are_reproducible_and_guarded(tmp_path):
    write_world_sources(tmp_path / "a", WorldSpec(), SMALL, seed=2)
    write_world_sources(tmp_path / "b", WorldSpec(), SMALL, seed=2)
    for source in ("laion400m", "llava_instruct"):
        truth = [
            json.loads((tmp_path / d / TRUTH_DIR / f"{source}.json").read_text())
            for d in ("a", "b")
        ]
        assert truth[0] == truth[1] and truth[0]["rows"]
    layouts = (tmp_path / "a" / LAYOUT_FILE).read_text()
    write_world_sources(tmp_path / "a", WorldSpec(), SMALL, seed=2)  # reused, not rewritten
    assert (tmp_path / "a" / LAYOUT_FILE).read_text() == layouts
    with pytest.raises(WorldError, match="written with"):
        write_world_sources(tmp_path / "a", WorldSpec(image_size=32), SMALL, seed=2)


def test_world_eval_sets_load_through_the_benchmark_readers(tmp_path):
    paths = write_world_evals(tmp_path, WorldSpec(), seed=0, coco_images=12, vqa_images=6)
    manifest = build_coco_manifest(paths.coco_captions, num_samples=12, seed=0)
    truth = read_world_truth(paths.coco_truth)
    assert truth.values["color"] == list(WorldSpec().colors)
    assert len(manifest.items) == 12
    for item in manifest.items:
        obj = truth.objects[item.image_id]
        assert f"{obj['color']} {obj['shape']}" in item.caption
        assert (paths.coco_ref_images / item.file_name).is_file()
    qs = load_questions("vqav2", paths.vqa_questions, paths.vqa_annotations)
    assert {q.answer_type for q in qs} >= {"color", "shape", "position", "number"}
    assert all((paths.vqa_images / q.image).is_file() and len(set(q.answers)) == 1 for q in qs)
