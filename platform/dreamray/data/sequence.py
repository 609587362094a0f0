"""The sequence builder: one unified-schema row -> input_ids, labels and which images go where.

Pure (no Ray, no torch): it works on token ids and image *indices*; decoding and transforming
the images that survive is `dreamray.data.transforms`' job, so dropped images are never decoded.

Layouts (DESIGN.md "Sequence building"; IMG / DRM blocks from `dreamray.model.tokens`):
- pair, image->text: ``<s> IMG caption </s>``, labels on caption and ``</s>``;
- pair, text->image: ``<s> caption DRM </s>``, no labels (the image is the diffusion target);
  joint mode flips a coin that is a pure function of (seed, sample id);
- document: ``<s> seg_0 [blocks] seg_1 [blocks] ... </s>``, images right after their sentence,
  block = IMG (comprehension), DRM (creation) or DRM + IMG (joint, the same image twice);
  labels on all text, ``<dream_start>`` and ``</s>``;
- instruction document: ``<s> SYSTEM USER: {instruction} ASSISTANT:`` (masked), the document;
- conversation: vicuna_v1.1, ``<s> SYSTEM USER: u ASSISTANT: a</s>USER: ...``, labels only on
  assistant text and its ``</s>``; ``<image>`` -> IMG, ``<dream>`` -> DRM + IMG.

Length limit: text may be cut, a block never is. A block that does not fit ends the sequence;
it and every later image are dropped and counted in `BuiltSample.images_dropped`. A pair, an
instruction or a conversation whose text alone does not fit is skipped (`SkipSample`), since
truncating it would leave a sample without its target; a long document is just truncated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamray.contracts import CONFIG_FILE
from dreamray.data.mixing import stable_key
from dreamray.data.schema import (
    DREAM_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    KIND_CONVERSATION,
    KIND_DOCUMENT,
    KIND_PAIR,
    ROLE_ASSISTANT,
    ROLE_USER,
)
from dreamray.model.tokens import IGNORE_INDEX, SpecialTokenIds, adds_word_boundary

MODES = ("comprehension", "creation", "joint")
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Reasons a sample is skipped at training time (counted, never fatal on their own).
SKIP_TOO_LONG = "too_long"
SKIP_PLACEHOLDER = "placeholder_mismatch"
SKIP_MALFORMED = "malformed_sample"
SKIP_IMAGE = "image_transform_failed"
SKIP_REASONS = (SKIP_TOO_LONG, SKIP_PLACEHOLDER, SKIP_MALFORMED, SKIP_IMAGE)

_PLACEHOLDER_RE = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(DREAM_PLACEHOLDER)})")


class SkipSample(ValueError):
    """A sample that cannot be trained on; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class SequenceLayout:
    """The sizes that shape every sequence."""

    num_patches: int  # CLIP patches per image: (image_size / patch_size)^2
    num_queries: int  # dream queries Q
    max_length: int

    @classmethod
    def from_model(cls, vision_path: str | Path, num_queries: int, max_length: int):
        """Read the patch count from the CLIP vision config.

        Args:
            vision_path: HF CLIP vision dir (its ``config.json``).
            num_queries: `ModelSpec.num_dream_queries`.
            max_length: `ModelSpec.max_length`.

        Returns:
            The layout.
        """
        config = json.loads((Path(vision_path) / CONFIG_FILE).read_text())
        config = config.get("vision_config", config)  # a full CLIPModel config nests it
        side = int(config["image_size"]) // int(config["patch_size"])
        return cls(num_patches=side * side, num_queries=num_queries, max_length=max_length)


@dataclass
class BuiltSample:
    """A sample's token sequence; image lists hold indices into the row's `images`."""

    input_ids: list[int]
    labels: list[int]
    clip_images: list[int]  # one per IMG block, in sequence order
    sd_images: list[int]  # one per DRM block, in sequence order
    images_dropped: int = 0


@dataclass
class _Piece:
    """Text, or one image's block(s): the unit of truncation."""

    ids: list[int]
    labels: list[int]
    clip: list[int] = field(default_factory=list)
    sd: list[int] = field(default_factory=list)

    @property
    def is_block(self) -> bool:
        return bool(self.clip or self.sd)


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) that is a pure function of `parts` (stable across processes).

    Args:
        parts: values whose `str` identifies the draw, e.g. (seed, sample id, "direction").

    Returns:
        A float in [0, 1).
    """
    return stable_key(*parts) / 2.0**64


def load_stage_tokenizer(tokenizer_dir: str) -> Any:
    """Load a tokenizer and add DreamLLM's special tokens when they are missing.

    Args:
        tokenizer_dir: a dir with HF tokenizer files (the base LLM's or a stage artifact's).

    Returns:
        The tokenizer (token ids are deterministic: the add order is fixed).
    """
    from transformers import AutoTokenizer

    from dreamray.model.tokens import add_dreamllm_tokens

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    add_dreamllm_tokens(tokenizer)
    return tokenizer


class SequenceBuilder:
    """Builds token sequences for one stage (one tokenizer, layout, mode and seed)."""

    def __init__(self, tokenizer: Any, layout: SequenceLayout, mode: str, seed: int) -> None:
        """Args:
        tokenizer: an HF tokenizer that already has DreamLLM's special tokens.
        layout: block sizes and the length limit.
        mode: one of MODES (`DataSpec.mode`).
        seed: `DataSpec.seed`, for the joint-mode pair direction.

        Raises:
            ValueError: unknown mode.
            MissingSpecialTokensError: the tokenizer lacks the special tokens.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.tokenizer = tokenizer
        self.ids = SpecialTokenIds.from_tokenizer(tokenizer)
        self.layout = layout
        self.mode = mode
        self.seed = seed
        self._masked = self.ids.unsupervised_ids()
        self._own_word_boundary = adds_word_boundary(tokenizer)

    def build(self, row: Mapping[str, Any]) -> BuiltSample:
        """Build one sample.

        Args:
            row: a unified-schema row (at least id, kind, texts, roles, instruction, images,
                image_after).

        Returns:
            The built sample.

        Raises:
            SkipSample: the sample cannot be trained on (reason in `SkipSample.reason`).
        """
        kind = row["kind"]
        if kind == KIND_PAIR:
            return self._pair(row)
        if kind == KIND_DOCUMENT:
            return self._document(row)
        if kind == KIND_CONVERSATION:
            return self._conversation(row)
        raise SkipSample(SKIP_MALFORMED, f"unknown kind {kind!r}")

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text: no BOS/EOS, and special-token strings inside the text stay
        text (a caption that says "<image>" must not create an image slot)."""
        if self._own_word_boundary and text.startswith(" "):
            # SentencePiece opens every encoded text with a `▁` of its own: the piece's leading
            # space is that boundary, and encoding it too would put `▁ ▁word` after a block
            text = text[1:]
        if not text:
            return []
        out = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)
        return list(out["input_ids"])

    def pair_is_image_to_text(self, sample_id: str) -> bool:
        """Direction of a pair: fixed by the mode, or a per-sample coin in joint mode."""
        if self.mode != "joint":
            return self.mode == "comprehension"
        return stable_unit(self.seed, sample_id, "pair-direction") < 0.5

    # -- kinds -------------------------------------------------------------------------------

    def _pair(self, row: Mapping[str, Any]) -> BuiltSample:
        if len(row["texts"]) != 1 or len(row["images"]) != 1:
            raise SkipSample(SKIP_MALFORMED, "a pair has exactly one text and one image")
        caption = self.encode(row["texts"][0].strip())
        self._check_fits(len(caption) + 2, "caption")
        i2t = self.pair_is_image_to_text(row["id"])
        block = self._block(0, clip=i2t, dream=not i2t, supervise_dream=False)
        # the caption gives way to the block: a pair without its image is no sample
        caption = caption[: self.layout.max_length - 2 - len(block.ids)]
        text = _Piece(caption, caption if i2t else [IGNORE_INDEX] * len(caption))
        pieces = [block, text] if i2t else [text, block]
        eos_label = self.ids.eos if i2t else IGNORE_INDEX
        return self._assemble([self._bos(), *pieces], eos_label)

    def _document(self, row: Mapping[str, Any]) -> BuiltSample:
        if len(row["image_after"]) != len(row["images"]):
            raise SkipSample(SKIP_MALFORMED, "image_after must have one entry per image")
        pieces = [self._bos()]
        instruction = row["instruction"]
        if instruction is not None:
            prompt = f"{VICUNA_SYSTEM} USER: {instruction} ASSISTANT:"
            pieces.append(self._text(prompt, supervised=False))
            self._check_fits(len(pieces[1].ids) + 2, "instruction prompt")
        pieces += self._document_body(
            row["texts"], row["image_after"], lead=" " if instruction is not None else ""
        )
        return self._assemble(pieces, self.ids.eos)

    def _document_body(self, texts: Sequence[str], image_after: Sequence[int], lead: str):
        if any(not 0 <= int(a) < len(texts) for a in image_after):
            raise SkipSample(SKIP_MALFORMED, "image_after must index texts")
        after: dict[int, list[int]] = {}
        for image, sentence in sorted(enumerate(image_after), key=lambda t: (t[1], t[0])):
            after.setdefault(int(sentence), []).append(image)
        pieces, segment = [], []
        for j, sentence in enumerate(texts):
            if sentence.strip():
                segment.append(sentence.strip())
            if j in after or j == len(texts) - 1:
                if segment:  # the lead space belongs to the first real text only
                    pieces.append(self._text(lead + " ".join(segment), supervised=True))
                    segment, lead = [], ""
                pieces += [self._image_block(i) for i in after.get(j, [])]
        return pieces

    def _image_block(self, image: int) -> _Piece:
        dream = self.mode in ("creation", "joint")
        return self._block(image, clip=self.mode != "creation", dream=dream, supervise_dream=True)

    def _conversation(self, row: Mapping[str, Any]) -> BuiltSample:
        texts, roles = list(row["texts"]), list(row["roles"])
        expected = [ROLE_USER, ROLE_ASSISTANT] * ((len(texts) + 1) // 2)
        if len(roles) != len(texts) or roles != expected[: len(texts)] or len(texts) < 2:
            raise SkipSample(SKIP_MALFORMED, f"roles must alternate user/assistant: {roles}")
        n_slots = sum(len(_PLACEHOLDER_RE.findall(t)) for t in texts)
        if n_slots != len(row["images"]):
            raise SkipSample(
                SKIP_PLACEHOLDER, f"{n_slots} placeholders for {len(row['images'])} images"
            )
        pieces, images = [self._bos()], iter(range(n_slots))
        for turn, (text, role) in enumerate(zip(texts, roles, strict=True)):
            if role == ROLE_USER:
                system = f"{VICUNA_SYSTEM} " if turn == 0 else ""
                pieces += self._turn(f"{system}USER: {text} ASSISTANT:", False, images)
            else:
                pieces += self._turn(f" {text}", True, images)
                pieces.append(_Piece([self.ids.eos], [self.ids.eos]))
        text_len = sum(len(p.ids) for p in pieces if not p.is_block)
        self._check_fits(text_len, "conversation text")
        return self._assemble(pieces, None)

    def _turn(self, text: str, supervised: bool, images) -> list[_Piece]:
        pieces = []
        for part in _PLACEHOLDER_RE.split(text):
            if part == IMAGE_PLACEHOLDER:
                pieces.append(
                    self._block(next(images), clip=True, dream=False, supervise_dream=supervised)
                )
            elif part == DREAM_PLACEHOLDER:
                pieces.append(
                    self._block(next(images), clip=True, dream=True, supervise_dream=supervised)
                )
            elif part:
                pieces.append(self._text(part, supervised))
        return pieces

    # -- pieces ------------------------------------------------------------------------------

    def _bos(self) -> _Piece:
        return _Piece([self.ids.bos], [IGNORE_INDEX])

    def _text(self, text: str, supervised: bool) -> _Piece:
        ids = self.encode(text)
        return _Piece(ids, list(ids) if supervised else [IGNORE_INDEX] * len(ids))

    def _block(self, image: int, clip: bool, dream: bool, supervise_dream: bool) -> _Piece:
        """DRM and/or IMG for one image; DRM first (joint: dream it, then see it)."""
        ids: list[int] = []
        if dream:
            ids += self.ids.dream_block(self.layout.num_queries)
        if clip:
            ids += self.ids.image_block(self.layout.num_patches)
        labels = [IGNORE_INDEX if t in self._masked else t for t in ids]
        if not supervise_dream:
            labels = [IGNORE_INDEX] * len(ids)
        return _Piece(ids, labels, clip=[image] if clip else [], sd=[image] if dream else [])

    def _check_fits(self, length: int, what: str) -> None:
        if length > self.layout.max_length:
            raise SkipSample(
                SKIP_TOO_LONG, f"{what} is {length} tokens, limit {self.layout.max_length}"
            )

    def _assemble(self, pieces: list[_Piece], eos_label: int | None) -> BuiltSample:
        """Concatenate pieces under the limit; `eos_label` None: no EOS is appended."""
        budget = self.layout.max_length - (eos_label is not None)
        out = BuiltSample([], [], [], [])
        for k, piece in enumerate(pieces):
            room = budget - len(out.input_ids)
            if len(piece.ids) > room and (piece.is_block or room <= 0):
                out.images_dropped = sum(len(set(p.clip + p.sd)) for p in pieces[k:])
                break
            out.input_ids += piece.ids[:room]
            out.labels += piece.labels[:room]
            out.clip_images += piece.clip
            out.sd_images += piece.sd
            if len(piece.ids) > room:  # text cut: whatever follows cannot fit either
                out.images_dropped = sum(len(set(p.clip + p.sd)) for p in pieces[k + 1 :])
                break
        if eos_label is not None:
            out.input_ids.append(self.ids.eos)
            out.labels.append(eos_label)
        return out
