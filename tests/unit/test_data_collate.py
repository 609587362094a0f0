"""Image transforms (every mode to RGB, SD crop/flip, CLIP processor) and the collator."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from dreamray.data.collate import CollateSpec, collate
from dreamray.data.records import make_record, skipped_record
from dreamray.data.transforms import ImageTransforms, decode_rgb, sd_pixels
from dreamray.model.tokens import IGNORE_INDEX


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def test_decode_converts_every_mode_to_rgb():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_rgb(encode(transparent)).getpixel((0, 0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert grey16.mode.startswith("I")
    assert decode_rgb(encode(grey16)).getpixel((0, 0)) == (255, 255, 255)
    half16 = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert decode_rgb(encode(half16)).getpixel((0, 0)) == (128, 128, 128)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    assert decode_rgb(encode(cmyk, "JPEG")).mode == "RGB"
    for mode in ("L", "P", "1", "LA"):
        assert decode_rgb(encode(Image.new(mode, (4, 4)))).mode == "RGB"


def test_sd_pixels_resize_shorter_side_center_crop_and_flip():
    arr = np.zeros((8, 16, 3), dtype=np.uint8)
    arr[:, :8] = 255  # left half white
    image = Image.fromarray(arr)
    out = sd_pixels(image, 4, flip=False)
    assert out.shape == (3, 4, 4) and out.dtype == np.uint8
    assert out[0, 0, 0] == 255 and out[0, 0, -1] == 0  # crop kept the middle: white | black
    flipped = sd_pixels(image, 4, flip=True)
    np.testing.assert_array_equal(flipped, out[:, :, ::-1])


def test_image_transforms_shapes_and_deterministic_flip(tiny_zoo):
    t = ImageTransforms(tiny_zoo.vision, tiny_zoo.diffusion, random_flip=True, seed=3)
    assert t.clip_shape == (3, 32, 32) and t.sd_size == 16
    data = encode(Image.new("RGB", (40, 30), (10, 200, 30)), "JPEG")
    clip, sd = t.sample_pixels("a/0/0", [data, data], clip=[0, 1], sd=[1])
    assert clip.shape == (2, 3, 32, 32) and clip.dtype == np.uint8
    assert sd.shape == (1, 3, 16, 16) and sd.dtype == np.uint8
    again = t.sample_pixels("a/0/0", [data, data], clip=[0, 1], sd=[1])
    np.testing.assert_array_equal(again[1], sd)
    empty_clip, empty_sd = t.sample_pixels("a/0/0", [data], clip=[], sd=[])
    assert empty_clip.shape == (0, 3, 32, 32) and empty_sd.shape == (0, 3, 16, 16)
    with pytest.raises(Exception):  # noqa: B017 - PIL's exception type varies by format
        t.sample_pixels("a/0/1", [b"not an image"], clip=[0], sd=[])


def test_collated_clip_pixels_equal_the_clip_processor_output(tiny_zoo):
    from dreamray.config.specs import TrainStageSpec
    from dreamray.data.batches import make_collate_spec

    t = ImageTransforms(tiny_zoo.vision, tiny_zoo.diffusion, random_flip=False, seed=0)
    rng = np.random.default_rng(0)
    data = [encode(Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)))]
    clip, sd = t.sample_pixels("a/0/0", data, clip=[0], sd=[0])
    record = make_record(0, "a/0/0", "src", [1, 2], [1, 2], clip, sd, 0)
    paths = {
        "llm_path": str(tiny_zoo.llm),
        "vision_path": str(tiny_zoo.vision),
        "diffusion_path": str(tiny_zoo.diffusion),
    }
    stage = TrainStageSpec.model_validate(
        {
            "model": paths,
            "trainable": ["llm"],
            "optim": {"lr": 1.0},
            "loss": {"lm": 1.0, "vm": 0.0},
            "deepspeed": {"global_batch_size": 1, "micro_batch_per_gpu": 1},
            "data": {
                "sources": [{"name": "a", "path": "a", "weight": 1.0}],
                "mode": "joint",
                "num_samples": 1,
            },
        }
    )
    spec = make_collate_spec(stage, str(tiny_zoo.llm))
    batch = collate([record], spec)
    expected = t.clip_processor(images=[decode_rgb(data[0])], return_tensors="pt")
    torch.testing.assert_close(batch["clip_pixel_values"], expected["pixel_values"])


def test_clip_pixels_pass_uint8_through_and_round_a_float_backend(tiny_zoo):
    t = ImageTransforms(tiny_zoo.vision, tiny_zoo.diffusion, random_flip=False, seed=0)
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    uint8 = t.clip_pixels([image])
    direct = t.clip_processor(images=[image], return_tensors="np", do_rescale=False,
                              do_normalize=False)["pixel_values"]
    assert uint8.dtype == np.uint8
    np.testing.assert_array_equal(uint8, direct)
    floats = np.array([[[[-3.0, 12.4, 12.6, 300.0]]]], dtype=np.float32)
    t.clip_processor = lambda **_: {"pixel_values": floats}
    np.testing.assert_array_equal(t.clip_pixels([image]), [[[[0, 12, 13, 255]]]])


SPEC = CollateSpec(7, (3, 2, 2), 2, clip_rescale=1.0, clip_mean=(0.0,) * 3, clip_std=(1.0,) * 3)


def record(pos, ids, labels, n_clip, n_sd):
    clip = np.full((n_clip, 3, 2, 2), pos, dtype=np.uint8)
    sd = np.full((n_sd, 3, 2, 2), 255 if pos % 2 else 0, dtype=np.uint8)
    return make_record(pos, f"s/{pos}", "src", ids, labels, clip, sd, 0)


def test_collate_pads_right_and_concatenates_images_in_sample_order():
    recs = [record(1, [1, 5, 6], [-100, 5, 6], 1, 1), record(2, [1, 9], [-100, 9], 2, 0)]
    batch = collate(recs, SPEC)
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 9, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 6], [-100, 9, IGNORE_INDEX]]
    assert batch["input_ids"].dtype == torch.long
    assert batch["clip_pixel_values"].shape == (3, 3, 2, 2)
    assert batch["clip_pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]
    sd = batch["sd_pixel_values"]
    assert sd.shape == (1, 3, 2, 2) and sd.dtype == torch.float32
    assert sd.max().item() == 1.0  # uint8 255 -> 1.0


def test_collate_without_images_gives_empty_image_tensors():
    batch = collate([record(2, [1, 2], [-100, 2], 0, 0)], SPEC)
    assert batch["clip_pixel_values"].shape == (0, 3, 2, 2)
    assert batch["sd_pixel_values"].shape == (0, 3, 2, 2)
    assert collate([record(2, [1], [-100], 0, 1)], SPEC)["sd_pixel_values"].min() == -1.0


def test_collate_rejects_skipped_and_inconsistent_records():
    with pytest.raises(ValueError, match="skipped"):
        collate([skipped_record(0, "s/0", "src", "too_long")], SPEC)
    bad = dict(record(1, [1], [1], 1, 0), n_clip=2)
    with pytest.raises(ValueError, match="clip_pixels"):
        collate([bad], SPEC)
    with pytest.raises(ValueError, match="empty"):
        collate([], SPEC)


def plain(rec: dict) -> dict:
    return {k: bytes(v) if isinstance(v, np.ndarray) else v for k, v in rec.items()}


def test_records_table_shares_the_payload_memory_and_round_trips_through_pickle():
    import pickle

    from dreamray.data.batches import table_records
    from dreamray.data.records import RECORD_SCHEMA, records_table

    recs = [record(1, [1, 5, 6], [-100, 5, 6], 1, 1), skipped_record(2, "s/2", "src", "long"),
            record(3, [1], [-100], 0, 2)]
    table = records_table(recs)
    assert table.schema == RECORD_SCHEMA and table.num_rows == 3
    clip = table.column("clip_pixels").chunk(0)
    assert np.shares_memory(np.frombuffer(clip.buffers()[2], np.uint8), recs[0]["clip_pixels"])
    # what the object store does to a block (Ray pickles with out-of-band buffers)
    copied = pickle.loads(pickle.dumps(table, protocol=5))
    for table_ in (table, copied, copied.combine_chunks()):
        assert [plain(r) for r in table_records(table_)] == [plain(r) for r in recs]
    assert records_table([]).num_rows == 0


def test_arrow_batches_give_back_the_records_zero_copy():
    from dreamray.data.batches import table_records
    from dreamray.data.records import records_table

    recs = [record(1, [1, 5, 6], [-100, 5, 6], 1, 1), record(2, [1, 9], [-100, 9], 2, 0),
            record(3, [1], [-100], 0, 2), record(4, [1, 4], [-100, 4], 1, 0)]
    whole = records_table(recs).combine_chunks()
    # what Ray Data hands out: slices of blocks (offset > 0) and batches spanning two blocks
    two_blocks = pa.concat_tables([whole.slice(1, 2), whole.slice(3, 1)])
    for table, expected in ((whole, recs), (whole.slice(1, 2), recs[1:3]),
                            (two_blocks, recs[1:])):
        got = list(table_records(table))
        assert [r["position"] for r in got] == [r["position"] for r in expected]
        for mine, theirs in zip(got, expected, strict=True):
            assert plain(mine) == plain(theirs)
        assert np.shares_memory(got[0]["clip_pixels"],
                                np.frombuffer(table.column("clip_pixels").chunks[0].buffers()[2],
                                              np.uint8))
        batch, want = collate(got, SPEC), collate(expected, SPEC)
        assert all(torch.equal(batch[k], want[k]) for k in want)
