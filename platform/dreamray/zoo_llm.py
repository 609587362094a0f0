"""The tiny zoo's LLM: a byte-level BPE tokenizer (Llama/Vicuna conventions) and a random causal LM
of one of the supported families (`LLAMA`, `MISTRAL`, `QWEN2`), all built by one builder.

Imported by `dreamray.zoo`, which re-exports these names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_VOCAB_SIZE = 1000
TINY_CORPUS_SEED = 1234


def _tiny_corpus(num_lines: int = 3000) -> list[str]:
    """Deterministic English-ish text, so the BPE merges look like a real tokenizer's."""
    rng = random.Random(TINY_CORPUS_SEED)
    words = (
        "a an the of to in on with and or is are was were be this that it image picture photo "
        "dog cat man woman child red blue green yellow black white big small on top left right "
        "sitting standing running table street tree house car boat sky water beach city field "
        "what where how many color shows there two three four describe question answer user "
        "assistant please draw generate create painting style cute happy old new near under "
        "USER ASSISTANT Image Dream ! ? , . : ; ' \" ( ) 0 1 2 3 4 5 6 7 8 9 10 2024"
    ).split()
    # pseudo-words give BPE enough distinct pairs to reach the target vocab size
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(600)]
    lines = []
    for _ in range(num_lines):
        n = rng.randint(4, 16)
        lines.append(" ".join(rng.choice(words) for _ in range(n)))
    return lines


def build_tokenizer(out_dir: Path, corpus: list[str] | None = None) -> Any:
    """Train a byte-level BPE and save it as an HF fast tokenizer (Llama/Vicuna conventions).

    Args:
        out_dir: where to save it.
        corpus: training lines (None: the fixed English-ish corpus of the random zoo).

    Returns:
        The `PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or _tiny_corpus(), trainer=trainer)
    # Llama/Vicuna prepend <s> and add no </s>; the sequence builder appends </s> itself
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        padding_side="right",
    )
    hf_tok.save_pretrained(out_dir)
    return hf_tok


@dataclass(frozen=True)
class LlmFamily:
    """A base-LLM family the tiny zoo can build: its transformers classes and what its tiny
    config sets besides the shared shape (classes named, imported only when a model is built)."""

    name: str
    config_class: str
    model_class: str
    extra: tuple[tuple[str, Any], ...] = ()

    def classes(self) -> tuple[Any, Any]:
        """``(config class, causal LM class)`` from transformers."""
        import transformers

        return getattr(transformers, self.config_class), getattr(transformers, self.model_class)


LLAMA = LlmFamily("llama", "LlamaConfig", "LlamaForCausalLM")
# grouped-query attention (2 KV heads), as the real Mistral-7B and Qwen2 use; no sliding window
MISTRAL = LlmFamily("mistral", "MistralConfig", "MistralForCausalLM",
                    (("num_key_value_heads", 2), ("sliding_window", None)))
QWEN2 = LlmFamily("qwen2", "Qwen2Config", "Qwen2ForCausalLM", (("num_key_value_heads", 2),))
LLM_FAMILIES = (LLAMA, MISTRAL, QWEN2)


def tiny_llm_config(tok: Any, family: LlmFamily = LLAMA) -> Any:
    """The tiny LLM's config (2 layers, width 64) for tokenizer `tok`.

    Args:
        tok: the tokenizer (its length and bos/eos ids are read).
        family: the LLM family (Llama by default).

    Returns:
        The family's config object.
    """
    config_class, _ = family.classes()
    shape = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    return config_class(**{**shape, **dict(family.extra)})


def build_tiny_llm(out_dir: Path, seed: int, family: LlmFamily = LLAMA) -> Path:
    """Write the tiny LLM dir (byte-level BPE tokenizer + random causal LM) of one family.

    Args:
        out_dir: the dir to write.
        seed: weight-init seed.
        family: the LLM family.

    Returns:
        `out_dir`.
    """
    import torch

    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    _, model_class = family.classes()
    model_class(tiny_llm_config(tok, family)).save_pretrained(out_dir)
    return out_dir
