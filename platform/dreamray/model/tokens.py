"""DreamLLM's special tokens, their ids (always read from the tokenizer) and token blocks.

An IMG block is `<im_start> + P x <im_patch> + <im_end>` (P = number of CLIP patches) and a DRM
block is `<dream_start> + Q x <im_patch> + <dream_end>` (Q = number of dream queries): the dream
slots reuse `<im_patch>`, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE = "<image>"
IM_PATCH = "<im_patch>"
IM_START = "<im_start>"
IM_END = "<im_end>"
DREAM = "<dream>"
DREAM_START = "<dream_start>"
DREAM_END = "<dream_end>"
PAD = "[PAD]"

ADDITIONAL_SPECIAL_TOKENS = (IMAGE, IM_PATCH, IM_START, IM_END, DREAM, DREAM_START, DREAM_END)
IGNORE_INDEX = -100


class MissingSpecialTokensError(ValueError):
    """A tokenizer lacks DreamLLM's special tokens."""


def add_dreamllm_tokens(tokenizer: Any) -> int:
    """Add the pad token and DreamLLM's special tokens to a tokenizer if they are missing.

    Args:
        tokenizer: a Hugging Face tokenizer; modified in place.

    Returns:
        The number of tokens added (0 when the tokenizer already had them all).
    """
    added = 0
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD})
    vocab = tokenizer.get_vocab()
    missing = [t for t in ADDITIONAL_SPECIAL_TOKENS if t not in vocab]
    if missing:
        added += tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return added


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of DreamLLM's special tokens in one tokenizer."""

    image: int
    im_patch: int
    im_start: int
    im_end: int
    dream: int
    dream_start: int
    dream_end: int
    pad: int
    bos: int
    eos: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokenIds:
        """Read the ids from a tokenizer.

        Raises:
            MissingSpecialTokensError: naming every special token the tokenizer lacks.
        """
        vocab = tokenizer.get_vocab()
        missing = [t for t in ADDITIONAL_SPECIAL_TOKENS if t not in vocab]
        for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(tokenizer, attr) is None:
                missing.append(attr)
        if missing:
            raise MissingSpecialTokensError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} lacks {missing}; "
                "call dreamray.model.tokens.add_dreamllm_tokens on it first"
            )
        return cls(
            image=vocab[IMAGE],
            im_patch=vocab[IM_PATCH],
            im_start=vocab[IM_START],
            im_end=vocab[IM_END],
            dream=vocab[DREAM],
            dream_start=vocab[DREAM_START],
            dream_end=vocab[DREAM_END],
            pad=tokenizer.pad_token_id,
            bos=tokenizer.bos_token_id,
            eos=tokenizer.eos_token_id,
        )

    def image_block(self, num_patches: int) -> list[int]:
        """`<im_start> + num_patches x <im_patch> + <im_end>`."""
        return [self.im_start] + [self.im_patch] * num_patches + [self.im_end]

    def dream_block(self, num_queries: int) -> list[int]:
        """`<dream_start> + num_queries x <im_patch> + <dream_end>`."""
        return [self.dream_start] + [self.im_patch] * num_queries + [self.dream_end]

    def unsupervised_ids(self) -> frozenset[int]:
        """Token ids masked out of the LM labels (everything special but `<dream_start>`)."""
        return frozenset({self.im_patch, self.im_start, self.im_end, self.dream_end, self.pad})


def adds_word_boundary(tokenizer: Any) -> bool:
    """Whether the tokenizer starts every text with a word boundary of its own (SentencePiece's
    dummy prefix: "a" -> `▁a`, so " a" -> `▁ ▁a` ends with the tokens of "a"); byte-level BPE
    does not ("a" -> `a`, " a" -> `Ġa`). Text after an image block or special token then drops
    its leading space, which that boundary stands for.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Returns:
        Whether it adds the boundary.
    """
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" a", add_special_tokens=False)["input_ids"]
    return list(spaced[-len(bare):]) == list(bare)
