"""A Llama/Vicuna SentencePiece tokenizer (only ``tokenizer.model``) through the zoo, the special
tokens, the sequence builder and generation.

Expected ids come from the raw SentencePiece processor, never from the builder. The convention
(the reference's, REFERENCE.md 3.3): every text run between special tokens / blocks is encoded
on its own, so SentencePiece's dummy prefix gives it one leading ``▁``; a conversation is one
vicuna_v1.1 string cut only at ``<image>`` / ``</s>``, so an assistant answer continues its
``ASSISTANT:`` run (``▁answer``, not a second ``▁``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import NUM_QUERIES, tiny_spec
from PIL import Image
from spm_fixtures import SPM_VOCAB, processor, spm_zoo

from dreamray.data.sequence import VICUNA_SYSTEM, SequenceBuilder, SequenceLayout
from dreamray.model import generation as gen
from dreamray.model.tokens import ADDITIONAL_SPECIAL_TOKENS, IGNORE_INDEX, PAD

X = IGNORE_INDEX


@pytest.fixture(scope="module")
def zoo(tiny_zoo, tmp_path_factory):
    return spm_zoo(tiny_zoo, tmp_path_factory.mktemp("spm_zoo"))


@pytest.fixture(scope="module")
def sp(zoo):
    return processor((zoo.llm / "tokenizer.model").read_bytes())


@pytest.fixture(scope="module")
def model(zoo):
    from dreamray.model.build import build_dreamllm

    torch.manual_seed(0)
    return build_dreamllm(tiny_spec(zoo))


@pytest.fixture(scope="module")
def builder(model):
    layout = SequenceLayout(model.num_patches, NUM_QUERIES, max_length=512)
    return lambda mode: SequenceBuilder(model.tokenizer, layout, mode, seed=0)


def _special(model, token: str) -> int:
    return int(model.tokenizer.convert_tokens_to_ids(token))


def _img(model) -> list[int]:
    return [_special(model, "<im_start>")] + [_special(model, "<im_patch>")] * model.num_patches + [
        _special(model, "<im_end>")]


def _drm(model) -> list[int]:
    return [_special(model, "<dream_start>")] + [_special(model, "<im_patch>")] * NUM_QUERIES + [
        _special(model, "<dream_end>")]


def test_the_dir_has_only_tokenizer_model_and_loads_as_llama(zoo, sp):
    from transformers import AutoTokenizer

    files = {p.name for p in zoo.llm.iterdir()}
    assert not files & {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    tok = AutoTokenizer.from_pretrained(zoo.llm, local_files_only=True)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None and len(tok) == SPM_VOCAB == sp.get_piece_size()
    text = "a red dog sits on the beach, what color? 'xyz'"
    assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
    assert sp.id_to_piece(sp.encode("xyz")[1]).startswith("<0x")  # byte fallback is on


def test_special_tokens_follow_the_vocabulary_and_survive_the_artifact(model, sp, tmp_path):
    from transformers import AutoTokenizer

    ids = model.token_ids
    assert (ids.bos, ids.eos, ids.pad) == (1, 2, SPM_VOCAB)
    assert _special(model, PAD) == SPM_VOCAB
    added = [_special(model, t) for t in ADDITIONAL_SPECIAL_TOKENS]
    assert sorted(added) == list(range(SPM_VOCAB + 1, SPM_VOCAB + 8))
    assert model.llm.get_input_embeddings().weight.shape[0] == SPM_VOCAB + 8
    model.save_pretrained(tmp_path / "artifact")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "artifact")
    text = "draw a cat<image> on the beach"
    assert reloaded(text).input_ids == model.tokenizer(text).input_ids
    assert reloaded.convert_tokens_to_ids(list(ADDITIONAL_SPECIAL_TOKENS)) == added
    assert reloaded("a red dog", add_special_tokens=False).input_ids == sp.encode("a red dog")


def test_pairs_put_one_word_boundary_before_the_caption(model, builder, sp):
    caption = "a red dog sits on the beach"
    row = {"id": "p/0/0", "kind": "pair", "texts": [f"  {caption} "], "roles": [],
           "instruction": None, "images": [b"x"], "image_after": [0]}
    i2t = builder("comprehension").build(row)
    assert i2t.input_ids == [1] + _img(model) + sp.encode(caption) + [2]
    assert i2t.labels == [X] * (1 + len(_img(model))) + sp.encode(caption) + [2]
    t2i = builder("creation").build(row)
    assert t2i.input_ids == [1] + sp.encode(caption) + _drm(model) + [2]
    assert sp.id_to_piece(t2i.input_ids[1]) == "▁a"


def test_document_segments_after_blocks_and_after_an_instruction(model, builder, sp):
    first, second = "a red dog sits on the beach.", "the cat is blue!"
    row = {"id": "d/0/0", "kind": "document", "texts": [first, second], "roles": [],
           "instruction": "draw a picture", "images": [b"x"], "image_after": [0]}
    built = builder("joint").build(row)
    prompt = sp.encode(f"{VICUNA_SYSTEM} USER: draw a picture ASSISTANT:")
    expected = [1] + prompt + sp.encode(first) + _drm(model) + _img(model) + sp.encode(second)
    assert built.input_ids == expected + [2]
    after_block = built.input_ids.index(_special(model, "<im_end>")) + 1
    assert sp.id_to_piece(built.input_ids[after_block]).startswith("▁")  # one space, not two
    assert sp.id_to_piece(built.input_ids[1 + len(prompt)]) != "▁"


def test_conversations_are_one_vicuna_string_cut_at_images_and_eos(model, builder, sp):
    turns = ["<image>\nwhat color is it?", "red", "draw a cat", "a blue cat."]
    row = {"id": "c/0/0", "kind": "conversation", "texts": turns,
           "roles": ["user", "assistant", "user", "assistant"], "instruction": None,
           "images": [b"x"], "image_after": [0]}
    built = builder("comprehension").build(row)
    head = sp.encode(f"{VICUNA_SYSTEM} USER: ")
    run1 = sp.encode("\nwhat color is it? ASSISTANT: red")
    run2 = sp.encode("USER: draw a cat ASSISTANT: a blue cat.")
    assert built.input_ids == [1] + head + _img(model) + run1 + [2] + run2 + [2]
    answer1, answer2 = sp.encode("red"), sp.encode("a blue cat.")
    assert run1[-len(answer1):] == answer1 and run2[-len(answer2):] == answer2
    masked = 1 + len(head) + len(_img(model)) + len(run1) - len(answer1)
    expected_labels = ([X] * masked + answer1 + [2] + [X] * (len(run2) - len(answer2))
                       + answer2 + [2])
    assert built.labels == expected_labels


def test_generation_prompts_and_decoding_match_sentencepiece(model, sp):
    prompt = "USER: <image>\nwhat color is it? ASSISTANT:"
    ids = gen.prompt_ids(model, prompt)
    tail = sp.encode("\nwhat color is it? ASSISTANT:")
    assert ids == [1] + sp.encode("USER: ") + _img(model) + tail
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8))
    batch = gen.encode_prompts(model, [prompt], [[image]])
    new, seq = [], batch.input_ids
    with torch.no_grad():
        for _ in range(5):  # the greedy decode, recomputed in full at every step
            out, _ = model.run_llm(model.embed(seq, batch.clip_pixel_values),
                                   torch.ones_like(seq))
            token = int(out.logits[0, -1].argmax())
            if token == 2:
                break
            new.append(token)
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    text = gen.generate_text(model, [prompt], [[image]], max_new_tokens=5)[0]
    plain = [t for t in new if t < SPM_VOCAB]
    assert text == sp.decode(plain)


def test_a_space_after_an_image_placeholder_is_the_runs_own_word_boundary(model, sp, tiny_zoo):
    # each text run is encoded on its own: SentencePiece's dummy prefix is the run's `▁`, so
    # "<image> what" must not become `▁ ▁what` (the builder's convention, `SequenceBuilder.encode`)
    ids = gen.prompt_ids(model, "USER: <image> what color is it? <image>\nASSISTANT:")
    assert ids == ([1] + sp.encode("USER: ") + _img(model) + sp.encode("what color is it? ")
                   + _img(model) + sp.encode("\nASSISTANT:"))
    # byte-level BPE has no dummy prefix: its " what" keeps the space (`Ġwhat`)
    from model_fixtures import built_model

    bpe = built_model(tiny_zoo)
    tail = bpe.tokenizer(" what", add_special_tokens=False).input_ids
    assert gen.prompt_ids(bpe, "a <image> what")[-len(tail):] == tail
