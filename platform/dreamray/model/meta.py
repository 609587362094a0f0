"""The DreamLLM architecture on the meta device, from config-only dirs: true shapes, no weights.

Used to count parameters and plan memory (`dreamray.model.memory`) for towers nobody downloaded,
e.g. the config-only dirs of `dreamray.zoo.build_real_configs` (Vicuna-7B v1.1, CLIP ViT-L/14,
SD 2.1-base).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamray.config.specs import ModelSpec
from dreamray.model.tokens import ADDITIONAL_SPECIAL_TOKENS, PAD

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class _ShapeTokenizer:
    """A stand-in for a config-only LLM dir: sizes and special-token ids, no text.

    DreamLLM's tokens get ids after the base vocabulary, as `add_dreamllm_tokens` would give
    (pad first, then the 7 additional tokens: Vicuna's 32000 -> 32008, the released size).
    """

    def __init__(self, vocab_size: int, bos: int, eos: int) -> None:
        names = (PAD, *ADDITIONAL_SPECIAL_TOKENS)
        self._vocab = {name: vocab_size + i for i, name in enumerate(names)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id = vocab_size, bos, eos
        self.name_or_path = "shapes-only"

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def __len__(self) -> int:
        return max(self._vocab.values()) + 1


def _tokenizer_for(llm_dir: Path, config):
    if not any((llm_dir / name).is_file() for name in _TOKENIZER_FILES):
        return _ShapeTokenizer(config.vocab_size, config.bos_token_id, config.eos_token_id)
    from transformers import AutoTokenizer

    from dreamray.model.tokens import add_dreamllm_tokens

    tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    add_dreamllm_tokens(tokenizer)
    return tokenizer


def build_dreamllm_on_meta(llm_dir, vision_dir, diffusion_dir, spec: ModelSpec):
    """The DreamLLM architecture on the meta device: true shapes, no weights, nothing allocated.

    Args:
        llm_dir: HF causal LM dir (``config.json``; a tokenizer is used if present, else the
            vocabulary is the config's plus DreamLLM's 8 tokens).
        vision_dir: HF CLIP vision dir with its image processor config.
        diffusion_dir: diffusers SD dir with unet/, vae/, scheduler/ configs.
        spec: plugin shapes (queries, projectors); its paths are replaced by the dirs above.

    Returns:
        A `DreamLLM` on ``meta``, towers frozen. It cannot run (no tokenizer text, no values).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from dreamray.model import towers
    from dreamray.model.dreamllm import DreamLLM
    from dreamray.model.plugins import DreamEmbedding

    llm_dir = Path(llm_dir)
    paths = {"llm_path": str(llm_dir), "vision_path": str(vision_dir)}
    spec = spec.model_copy(update={**paths, "diffusion_path": str(diffusion_dir)})
    config = AutoConfig.from_pretrained(llm_dir, local_files_only=True)
    tokenizer = _tokenizer_for(llm_dir, config)
    config.vocab_size = max(config.vocab_size, len(tokenizer))  # = resize_for_tokenizer
    cfg = towers.plugin_config(spec)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(config)
        dim = llm.get_input_embeddings().embedding_dim
        vision = towers.vision_from_config(cfg, dim)
        dream = DreamEmbedding(spec.num_dream_queries, dim)
        head = towers.diffusion_from_config(cfg, dim)
    model = DreamLLM(llm, tokenizer, vision, dream, head, cfg)
    towers.freeze_towers(model)
    return model
