"""The shapes world written as every training source, in each source's original format.

The record layouts are the synthetic writers' (`dreamray.data.synthetic`), so the existing
converters read the world unchanged; only the content differs: every caption, sentence,
question and instruction is about the image it goes with. Beside each source's truth file
(`_truth/<source>.json`, what a correct conversion yields) the world writes
`_truth/<source>.scenes.json`: image sha256 -> the objects in that image.
"""

from __future__ import annotations

import io
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from dreamray.data.schema import KIND_PAIR, make_id
from dreamray.data.synthetic.chat import LAYOUTS as LLAVA_LAYOUTS
from dreamray.data.synthetic.chat import expect_conversation
from dreamray.data.synthetic.common import TRUTH_DIR, SourceLayout, Truth, sha256, write_bytes
from dreamray.data.synthetic.docs import expect_document, mmc4_record
from dreamray.data.synthetic.pairs import (
    IMG2DATASET_SOURCES,
    JDB_ANNOTATION,
    img2dataset_row,
    journeydb_record,
    write_parquet,
)
from dreamray.data.world.scene import Scene, WorldError, WorldSpec, render_scene, sample_scene
from dreamray.data.world.text import (
    DESCRIBE,
    answer_sentence,
    caption,
    describe,
    draw_instruction,
    questions,
)

JPEG_QUALITY = 95  # with 4:4:4 chroma: flat colours keep their hue up to the edges
ROWS_PER_SHARD = 500
# Objects in an image a stage may learn to draw (pairs, JourneyDB, documents, instructions):
# the world zoo's UNet draws single objects, and a caption of several objects asks the frozen
# UNet for an image it cannot make, whose loss swamps the dream queries' gradient (stage-I
# creation in process, 400 steps: colour 0.83 on single-object pairs, 0.17 with 1-3 objects).
# LLaVA's images, seen only through CLIP, keep 1 to `WorldSpec.max_objects` objects.
DRAWN_OBJECTS = 1


@dataclass(frozen=True)
class WorldSizes:
    """How many samples each source gets.

    Attributes:
        pairs: image-text pairs per img2dataset source and for JourneyDB.
        documents: MMC4 documents (2-3 scenes each).
        conversations: per LLaVA source (SFT memorised 400: the world's VQA overall went
            from 33.7% to 36.0% with 3000, docs/ARCHITECTURE.md "World zoo").
        instructions: InstructMMC4 drawing instructions.
    """

    pairs: int = 400
    documents: int = 200
    conversations: int = 3000
    instructions: int = 400

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise WorldError(f"sizes.{name} {value!r}: must be a positive integer")


class WorldWriter:
    """Draws scenes for one source (seeded by the source name) and records their truth."""

    def __init__(self, spec: WorldSpec, seed: int, source: str):
        self.spec, self.source = spec, source
        self.rng = random.Random((seed * 1_000_003 + zlib.crc32(source.encode())) & 0xFFFFFFFF)
        self.truth, self.scenes = Truth(source), {}

    def scene(self, num_objects: int | None = None) -> tuple[Scene, bytes]:
        """A new scene and its JPEG bytes (its objects recorded by the bytes' sha256)."""
        scene = sample_scene(self.rng, self.spec, num_objects)
        buf = io.BytesIO()
        render_scene(scene, self.spec).save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        data = buf.getvalue()
        self.scenes[sha256(data)] = scene.truth()
        return scene, data

    def finish(self, out: Path) -> Truth:
        """Write the truth files and return the conversion truth."""
        self.truth.write(out)
        path = out / TRUTH_DIR / f"{self.source}.scenes.json"
        path.write_text(json.dumps(self.scenes, indent=0, sort_keys=True) + "\n")
        return self.truth


def write_pairs(out: Path, source: str, spec: WorldSpec, seed: int, rows: int) -> SourceLayout:
    """img2dataset parquet shards of captioned scenes under `out/<source>/`."""
    writer, root = WorldWriter(spec, seed, source), out / source
    root.mkdir(parents=True, exist_ok=True)
    for shard in range(-(-rows // ROWS_PER_SHARD)):
        records = []
        for i in range(min(ROWS_PER_SHARD, rows - shard * ROWS_PER_SHARD)):
            key = f"{shard:05d}{i:04d}"
            scene, image = writer.scene(DRAWN_OBJECTS)
            text = caption(scene, writer.rng)
            records.append(img2dataset_row(key, text, image, "success", 0.35))
            writer.truth.expect(
                make_id(source, f"{shard:05d}", key), KIND_PAIR, [text], [image], [0]
            )
        write_parquet(records, root / f"{shard:05d}.parquet")
        stats = {"count": len(records), "successes": len(records)}
        (root / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    writer.finish(out)
    return SourceLayout(source, "img2dataset", [root], None)


def write_journeydb(out: Path, spec: WorldSpec, seed: int, rows: int) -> SourceLayout:
    """JourneyDB's annotation file (prompt: a drawing instruction; caption: the scene's)."""
    source = "journeydb"
    writer, root = WorldWriter(spec, seed, source), out / source / "data" / "train"
    lines = []
    for i in range(rows):
        scene, image = writer.scene(DRAWN_OBJECTS)
        img_path, text = f"./{i // 100:03d}/{i:06d}.jpg", caption(scene, writer.rng)
        write_bytes(root / "imgs" / img_path, image)
        lines.append(
            json.dumps(journeydb_record(img_path, text, draw_instruction(scene, writer.rng)))
        )
        writer.truth.expect(
            make_id(source, Path(JDB_ANNOTATION).stem, i), KIND_PAIR, [text], [image], [0]
        )
    (root / JDB_ANNOTATION).write_text("\n".join(lines) + "\n")
    writer.finish(out)
    return SourceLayout(source, "journeydb", [root / JDB_ANNOTATION], root / "imgs")


def _document(writer: WorldWriter, index: int, images_dir: Path, prefix: str = ""):
    """An MMC4 record of 2-3 one-object scenes: an opening line, then one sentence per scene."""
    texts, images, names = ["Here are some pictures of shapes."], [], []
    for k in range(writer.rng.randint(2, 3)):
        scene, image = writer.scene(DRAWN_OBJECTS)
        texts.append(caption(scene, writer.rng))
        names.append(f"{prefix}{index:06d}_{k}.jpg")
        write_bytes(images_dir / names[-1], image)
        images.append(image)
    matched = list(range(1, len(texts)))
    return mmc4_record(texts, names, matched, f"http://example.com/world/{index}"), images


def write_mmc4(out: Path, spec: WorldSpec, seed: int, docs: int) -> SourceLayout:
    """MMC4 JSON lines (`docs_shard_0_v2.jsonl`) with an `images/` folder."""
    source = "mmc4_core"
    writer, root = WorldWriter(spec, seed, source), out / source
    path, lines = root / "docs_shard_0_v2.jsonl", []
    for i in range(docs):
        record, images = _document(writer, i, root / "images")
        expect_document(writer.truth, make_id(source, path.stem, i), record, images)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    writer.finish(out)
    return SourceLayout(source, "mmc4", [path], root / "images")


def _conversation(writer: WorldWriter, source: str) -> tuple[list[dict], Scene, bytes]:
    scene, image = writer.scene()
    if source == "llava_pretrain":
        pairs = [(DESCRIBE, caption(scene, writer.rng))]
    else:
        qas = questions(scene)
        picked = writer.rng.sample(qas, min(len(qas), writer.rng.randint(1, 3)))
        pairs = [(qa.question, answer_sentence(qa)) for qa in picked]
    turns = []
    for r, (question, answer) in enumerate(pairs):
        turns += [
            {"from": "human", "value": f"<image>\n{question}" if r == 0 else question},
            {"from": "gpt", "value": answer},
        ]
    return turns, scene, image


def write_llava(out: Path, source: str, spec: WorldSpec, seed: int, rows: int) -> SourceLayout:
    """A LLaVA JSON list: captions (pretrain) or questions about the scene (instruct)."""
    name, pattern, _ = LLAVA_LAYOUTS[source]
    writer, root = WorldWriter(spec, seed, source), out / source
    path, records = root / name, []
    for i in range(rows):
        turns, _, image = _conversation(writer, source)
        sample_id = f"{i:09d}"
        record = {
            "id": sample_id,
            "image": pattern.format(shard=i // 1000, id=sample_id),
            "conversations": turns,
        }
        write_bytes(root / "images" / record["image"], image)
        expect_conversation(writer.truth, make_id(source, path.stem, i), record, [image])
        records.append(record)
    path.write_text(json.dumps(records, indent=1))
    writer.finish(out)
    return SourceLayout(source, "llava", [path], root / "images")


def write_instruct_mmc4(out: Path, spec: WorldSpec, seed: int, rows: int) -> SourceLayout:
    """InstructMMC4 records: "Draw a red square on the left." and the one-scene answer."""
    source = "instruct_mmc4"
    writer, root = WorldWriter(spec, seed, source), out / source
    path, images_dir, records = root / "instruct_mmc4.json", root / "mmc4-core-raw", []
    for i in range(rows):
        scene, image = writer.scene(DRAWN_OBJECTS)
        name = f"{i % 10:03d}/{i:06d}.jpg"
        write_bytes(images_dir / name, image)
        answer = f"Here is {describe(scene.objects[0])}."
        record = {
            "instruction": draw_instruction(scene, writer.rng),
            **mmc4_record([answer], [name], [0], f"http://example.com/draw/{i}"),
        }
        expect_document(
            writer.truth, make_id(source, path.stem, i), record, [image], record["instruction"]
        )
        records.append(record)
    path.write_text(json.dumps(records, indent=1))
    writer.finish(out)
    return SourceLayout(source, "instruct_mmc4", [path], images_dir)


def write_world_source(
    out: Path, source: str, spec: WorldSpec, seed: int, sizes: WorldSizes
) -> SourceLayout:
    """Write one source of the world.

    Args:
        out: the sources root; the source goes to `out/<source>/`.
        source: a name from `dreamray.data.schema.SOURCES`.
        spec: the world.
        seed: seed (same seed, same bytes).
        sizes: samples per source.

    Returns:
        How to convert it.

    Raises:
        WorldError: for a source the world has no writer for.
    """
    if source in IMG2DATASET_SOURCES:
        return write_pairs(out, source, spec, seed, sizes.pairs)
    if source == "journeydb":
        return write_journeydb(out, spec, seed, sizes.pairs)
    if source == "mmc4_core":
        return write_mmc4(out, spec, seed, sizes.documents)
    if source in LLAVA_LAYOUTS:
        return write_llava(out, source, spec, seed, sizes.conversations)
    if source == "instruct_mmc4":
        return write_instruct_mmc4(out, spec, seed, sizes.instructions)
    raise WorldError(f"the shapes world has no writer for source {source!r}")
