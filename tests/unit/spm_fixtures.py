"""A tiny SentencePiece tokenizer with Llama's settings, trained in the test, and a Llama on it.

Llama / Vicuna ship only ``tokenizer.model``: BPE, byte fallback, ``▁`` for whitespace with a
dummy prefix, unk/bos/eos = 0/1/2 (``<unk>``, ``<s>``, ``</s>``), no pad piece, no whitespace
normalisation. `llama_tokenizer_dir` writes exactly that file plus the model's ``config.json``.
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

from dreamray.zoo import ZooPaths, tiny_llm_config

SPM_VOCAB = 400  # 256 byte pieces + the corpus' characters + merges
_WORDS = (
    "a red blue green dog cat sits on the beach under tree draw picture of what color is it "
    "USER ASSISTANT A chat between curious user and an artificial intelligence assistant . "
    "The gives helpful , detailed polite answers to 's questions : ? !"
).split()


def _corpus() -> list[str]:
    lines = []
    for i in range(300):  # deterministic, no RNG: rotate through the words
        n = 4 + i % 9
        lines.append(" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(n)))
    return lines


def train_llama_spm() -> bytes:
    """Train the SentencePiece model in memory (single thread, well under a second).

    Returns:
        The serialized model (the bytes of a ``tokenizer.model``).
    """
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=proto, model_type="bpe",
        vocab_size=SPM_VOCAB, byte_fallback=True, character_coverage=1.0, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", num_threads=1, minloglevel=2,
    )
    return proto.getvalue()


def llama_llm_dir(out: Path, seed: int = 0) -> Path:
    """A tiny Llama causal LM dir whose only tokenizer file is ``tokenizer.model``.

    Args:
        out: the dir to write (``tokenizer.model``, ``config.json``, weights).
        seed: weight-init seed.

    Returns:
        `out`.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(train_llama_spm())
    config = tiny_llm_config(_VocabOnly(SPM_VOCAB))
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    assert len(AutoTokenizer.from_pretrained(out)) == SPM_VOCAB
    return out


class _VocabOnly:
    """What `tiny_llm_config` reads of a tokenizer: Llama's fixed special ids."""

    bos_token_id, eos_token_id = 1, 2

    def __init__(self, size: int) -> None:
        self._size = size

    def __len__(self) -> int:
        return self._size


def spm_zoo(tiny_zoo: ZooPaths, out: Path) -> ZooPaths:
    """The tiny zoo with its LLM replaced by the SentencePiece Llama."""
    return ZooPaths(llm=llama_llm_dir(out / "llm"), vision=tiny_zoo.vision,
                    diffusion=tiny_zoo.diffusion)


def processor(model_bytes: bytes) -> spm.SentencePieceProcessor:
    """The raw SentencePiece processor of a model (the independent oracle of the tests)."""
    return spm.SentencePieceProcessor(model_proto=model_bytes)
