"""The sequence builder pins the exact token layout and label mask of every kind and mode."""

from __future__ import annotations

import pytest

from dreamray.data.sequence import (
    SKIP_MALFORMED,
    SKIP_PLACEHOLDER,
    SKIP_TOO_LONG,
    VICUNA_SYSTEM,
    SequenceBuilder,
    SequenceLayout,
    SkipSample,
    stable_unit,
)
from dreamray.model.tokens import IGNORE_INDEX as X
from dreamray.model.tokens import SpecialTokenIds

Q = 4  # dream queries in these tests


@pytest.fixture(scope="module")
def tokenizer(tiny_zoo):
    from dreamray.data.sequence import load_stage_tokenizer

    return load_stage_tokenizer(str(tiny_zoo.llm))


@pytest.fixture(scope="module")
def layout(tiny_zoo):
    return SequenceLayout.from_model(tiny_zoo.vision, num_queries=Q, max_length=256)


def make(tokenizer, layout, mode, max_length=None, seed=0):
    if max_length is not None:
        layout = SequenceLayout(layout.num_patches, layout.num_queries, max_length)
    return SequenceBuilder(tokenizer, layout, mode, seed)


def row(kind, texts, images=0, after=None, roles=(), instruction=None, sample_id="s/0/0"):
    return {
        "id": sample_id,
        "kind": kind,
        "texts": list(texts),
        "roles": list(roles),
        "instruction": instruction,
        "images": [b"img%d" % i for i in range(images)],
        "image_after": list(after if after is not None else [0] * images),
    }


def blocks(ids: SpecialTokenIds, p: int):
    img = ids.image_block(p)
    drm = ids.dream_block(Q)
    drm_labels = [ids.dream_start] + [X] * (Q + 1)
    return img, drm, drm_labels


def test_layout_reads_patches_from_clip_config(layout):
    assert layout.num_patches == 16  # 32 px / patch 8, squared


def test_pair_image_to_text(tokenizer, layout):
    b = make(tokenizer, layout, "comprehension")
    ids = b.ids
    out = b.build(row("pair", ["a red dog"], images=1))
    cap = b.encode("a red dog")
    img, _, _ = blocks(ids, 16)
    assert out.input_ids == [ids.bos] + img + cap + [ids.eos]
    assert out.labels == [X] * (1 + len(img)) + cap + [ids.eos]
    assert (out.clip_images, out.sd_images, out.images_dropped) == ([0], [], 0)


def test_pair_text_to_image(tokenizer, layout):
    b = make(tokenizer, layout, "creation")
    ids = b.ids
    out = b.build(row("pair", ["  a red dog "], images=1))
    cap = b.encode("a red dog")
    _, drm, _ = blocks(ids, 16)
    assert out.input_ids == [ids.bos] + cap + drm + [ids.eos]
    assert out.labels == [X] * len(out.input_ids)
    assert (out.clip_images, out.sd_images) == ([], [0])


def test_joint_pair_direction_is_a_per_sample_coin(tokenizer, layout):
    b = make(tokenizer, layout, "joint", seed=7)
    directions = []
    for k in range(200):
        sid = f"blip/0/{k}"
        out = b.build(row("pair", ["a cat"], images=1, sample_id=sid))
        i2t = out.clip_images == [0]
        assert i2t == (stable_unit(7, sid, "pair-direction") < 0.5)
        again = b.build(row("pair", ["a cat"], images=1, sample_id=sid))
        assert (again.clip_images == [0]) == i2t  # same sample, same direction
        directions.append(i2t)
    assert 70 < sum(directions) < 130  # about half each way


def doc_row():
    # images after sentence 0 and sentence 2; sentence 1 is blank and disappears
    return row("document", ["First one.", "  ", "Third one.", "Last."], images=2, after=[0, 2])


@pytest.mark.parametrize("mode", ["comprehension", "creation", "joint"])
def test_document_layout_per_mode(tokenizer, layout, mode):
    b = make(tokenizer, layout, mode)
    ids = b.ids
    img, drm, drm_labels = blocks(ids, 16)
    block = {"comprehension": img, "creation": drm, "joint": drm + img}[mode]
    block_labels = {
        "comprehension": [X] * len(img),
        "creation": drm_labels,
        "joint": drm_labels + [X] * len(img),
    }[mode]
    s0, s2, s3 = b.encode("First one."), b.encode("Third one."), b.encode("Last.")
    out = b.build(doc_row())
    assert out.input_ids == [ids.bos] + s0 + block + s2 + block + s3 + [ids.eos]
    assert out.labels == [X] + s0 + block_labels + s2 + block_labels + s3 + [ids.eos]
    clip = [0, 1] if mode != "creation" else []
    sd = [0, 1] if mode != "comprehension" else []
    assert (out.clip_images, out.sd_images, out.images_dropped) == (clip, sd, 0)


def test_document_images_that_do_not_fit_are_dropped_whole(tokenizer, layout):
    b = make(tokenizer, layout, "joint")
    ids = b.ids
    img, drm, drm_labels = blocks(ids, 16)
    s0, s2 = b.encode("First one."), b.encode("Third one.")
    # room for BOS, s0, one DRM+IMG block and two tokens of s2, then EOS
    limit = 1 + len(s0) + len(drm + img) + 2 + 1
    out = make(tokenizer, layout, "joint", limit).build(doc_row())
    assert out.input_ids == [ids.bos] + s0 + drm + img + s2[:2] + [ids.eos]
    assert out.labels == [X] + s0 + drm_labels + [X] * len(img) + s2[:2] + [ids.eos]
    assert len(out.input_ids) == limit
    assert (out.clip_images, out.sd_images, out.images_dropped) == ([0], [0], 1)
    # one token short of the first block: no partial block, both images dropped
    tight = make(tokenizer, layout, "joint", 1 + len(s0) + len(drm + img) - 1 + 1)
    out = tight.build(doc_row())
    assert out.input_ids == [ids.bos] + s0 + [ids.eos]
    assert (out.clip_images, out.sd_images, out.images_dropped) == ([], [], 2)


def test_instruction_document_masks_the_prompt(tokenizer, layout):
    b = make(tokenizer, layout, "comprehension")
    ids = b.ids
    img, _, _ = blocks(ids, 16)
    r = row("document", ["Hello there.", "Bye."], images=1, after=[0], instruction="Write it.")
    out = b.build(r)
    prompt = b.encode(f"{VICUNA_SYSTEM} USER: Write it. ASSISTANT:")
    s0, s1 = b.encode(" Hello there."), b.encode("Bye.")
    assert out.input_ids == [ids.bos] + prompt + s0 + img + s1 + [ids.eos]
    assert out.labels == [X] * (1 + len(prompt)) + s0 + [X] * len(img) + s1 + [ids.eos]


def conversation():
    return row(
        "conversation",
        ["<image>\nWhat is it?", "A dog.", "Draw one.", "Here: <dream>"],
        images=2,
        roles=["user", "assistant", "user", "assistant"],
    )


def test_conversation_vicuna_template_and_masks(tokenizer, layout):
    b = make(tokenizer, layout, "joint")
    ids = b.ids
    img, drm, drm_labels = blocks(ids, 16)
    u1a = b.encode(f"{VICUNA_SYSTEM} USER: ")
    u1b = b.encode("\nWhat is it? ASSISTANT:")
    a1 = b.encode(" A dog.")
    u2 = b.encode("USER: Draw one. ASSISTANT:")
    a2 = b.encode(" Here: ")
    out = b.build(conversation())
    assert out.input_ids == (
        [ids.bos] + u1a + img + u1b + a1 + [ids.eos] + u2 + a2 + drm + img + [ids.eos]
    )
    masked = lambda n: [X] * n  # noqa: E731
    assert out.labels == (
        masked(1 + len(u1a) + len(img) + len(u1b))
        + a1
        + [ids.eos]
        + masked(len(u2))
        + a2
        + drm_labels
        + masked(len(img))
        + [ids.eos]
    )
    assert (out.clip_images, out.sd_images) == ([0, 1], [1])


@pytest.mark.parametrize("images", [1, 3])
def test_conversation_placeholder_mismatch_is_skipped(tokenizer, layout, images):
    r = dict(conversation(), images=[b"x"] * images)
    with pytest.raises(SkipSample) as err:
        make(tokenizer, layout, "joint").build(r)
    assert err.value.reason == SKIP_PLACEHOLDER


def test_too_long_without_images_is_skipped(tokenizer, layout):
    long_text = "the dog " * 200
    r = row("conversation", [long_text, "ok"], roles=["user", "assistant"])
    with pytest.raises(SkipSample) as err:
        make(tokenizer, layout, "joint", 64).build(r)
    assert err.value.reason == SKIP_TOO_LONG
    with pytest.raises(SkipSample) as err:
        make(tokenizer, layout, "creation", 64).build(row("pair", [long_text], images=1))
    assert err.value.reason == SKIP_TOO_LONG


def test_conversation_that_fits_without_images_drops_images_at_the_limit(tokenizer, layout):
    b = make(tokenizer, layout, "joint")
    full = b.build(conversation())
    limit = len(full.input_ids) - 3  # the final DRM + IMG block no longer fits
    out = make(tokenizer, layout, "joint", limit).build(conversation())
    assert out.images_dropped == 1 and out.clip_images == [0] and out.sd_images == []
    assert len(out.input_ids) <= limit
    assert out.input_ids[-1] != b.ids.im_patch  # no block cut in half


def test_malformed_rows_are_skipped(tokenizer, layout):
    b = make(tokenizer, layout, "joint")
    bad = [
        row("conversation", ["hi", "there"], roles=["assistant", "user"]),
        row("pair", ["a", "b"], images=1),
        row("video", ["a"]),
    ]
    for r in bad:
        with pytest.raises(SkipSample) as err:
            b.build(r)
        assert err.value.reason == SKIP_MALFORMED


def test_special_token_strings_in_text_stay_text(tokenizer, layout):
    b = make(tokenizer, layout, "comprehension")
    out = b.build(row("document", ["a <im_patch> <dream_start> <image> b"]))
    special = {b.ids.im_patch, b.ids.dream_start, b.ids.image, b.ids.im_start}
    assert not special & set(out.input_ids)
