"""CLIP best-of-N re-ranking: for each caption, the seed image with the largest image-text logit.

The reference (`--type select`) ranks the 8 seed images of an index by CLIP ViT-L/14's
`logits_per_image` against that entry's captions. Here the ranking text is the manifest's one
fixed caption, the same text every seed's image was generated from (the reference's shuffles
could pair an image with other captions). Ranking runs on a pool of `ClipWorker`s; a selection is
recorded in a results store and its image copied to `images/reranked/<item_id>.png`, so a re-run
only ranks what is missing.

The CLIP dir is an HF `CLIPModel` dir with an image processor and a tokenizer. Any HF tokenizer
whose vocabulary fits the text tower loads (`AutoTokenizer`): the tests use the tiny zoo's BPE
tokenizer in place of `CLIPTokenizerFast`, see `build_tiny_clip`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dreamray.evals.captions import CaptionManifest
from dreamray.evals.coco_gen import IMAGES_DIR, TEMP_SUFFIX, seed_dir
from dreamray.evals.pool import chunked
from dreamray.evals.results import ResultsStore
from dreamray.evals.telemetry import EvalProgress
from dreamray.files import atomic_path

RERANKED = "reranked"


def reranked_dir(out_dir: str | Path) -> Path:
    """The folder of the selected images."""
    return Path(out_dir) / IMAGES_DIR / RERANKED


class ClipWorker:
    """Scores (caption, candidate images) groups with one CLIP model."""

    def __init__(self, clip_dir: str) -> None:
        """Load the CLIP model, its image processor and its tokenizer.

        Args:
            clip_dir: an HF `CLIPModel` directory.
        """
        import torch
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = CLIPModel.from_pretrained(clip_dir).eval().to(self.device)
        self.processor = CLIPImageProcessor.from_pretrained(clip_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(clip_dir)
        if self.tokenizer.pad_token is None:  # a BPE stand-in without pad: one text, no padding
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def logits(self, caption: str, paths: list[str]) -> list[float]:
        """CLIP's `logits_per_image` of each image against one caption.

        Args:
            caption: the text (truncated to the text tower's length, 77 for real CLIP).
            paths: image files.

        Returns:
            One logit per image, in order.
        """
        import torch
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in paths]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        text = self.tokenizer(
            [caption], return_tensors="pt", truncation=True, max_length=self.max_length
        )
        with torch.no_grad():
            out = self.model(
                input_ids=text["input_ids"].to(self.device),
                attention_mask=text["attention_mask"].to(self.device),
                pixel_values=pixels.to(self.device),
            )
        return out.logits_per_image[:, 0].float().cpu().tolist()

    def select(self, groups: list[dict]) -> list[dict]:
        """Pick the best candidate of each group.

        Args:
            groups: `{"item_id", "caption", "seeds", "paths"}` dicts.

        Returns:
            `{"id": item_id, "seed", "path", "logits"}` per group (ties: the first seed).
        """
        out = []
        for g in groups:
            logits = self.logits(g["caption"], g["paths"])
            best = max(range(len(logits)), key=logits.__getitem__)
            out.append(
                {
                    "id": g["item_id"],
                    "seed": g["seeds"][best],
                    "path": g["paths"][best],
                    "logits": logits,
                }
            )
        return out


def rerank_groups(manifest: CaptionManifest, seeds: list[int], out_dir: str | Path) -> list[dict]:
    """One group per caption: its generated image under every seed."""
    return [
        {
            "item_id": item.item_id,
            "caption": item.caption,
            "seeds": list(seeds),
            "paths": [str(seed_dir(out_dir, s) / f"{item.item_id}.png") for s in seeds],
        }
        for item in manifest.items
    ]


def pending_groups(groups: list[dict], out_dir: str | Path, store: ResultsStore) -> list[dict]:
    """The groups without a recorded selection or without the selected image's copy."""
    target = reranked_dir(out_dir)
    return [
        g
        for g in groups
        if g["item_id"] not in store or not (target / f"{g['item_id']}.png").is_file()
    ]


def rerank(
    todo: list[dict],
    out_dir: str | Path,
    store: ResultsStore,
    pool: Any,
    chunk_size: int,
    progress: bool = True,
) -> int:
    """Select the best image of every group in `todo` and copy it to `images/reranked/`.

    Args:
        todo: groups from `rerank_groups`, usually filtered by `pending_groups`.
        out_dir: the run's output directory.
        store: the selection store (`id` = item id).
        pool: a pool of `ClipWorker`s.
        chunk_size: groups per actor task.
        progress: show the tqdm bar.

    Returns:
        How many groups this call ranked.
    """
    target = reranked_dir(out_dir)
    bar = EvalProgress("coco_fid_rerank", len(todo), progress)
    for _, records in pool.map_unordered(ClipWorker.select, chunked(todo, chunk_size)):
        for r in records:
            copy_atomic(r["path"], target / f"{r['id']}.png")
        store.append(records)
        bar.update(len(records))
    bar.close()
    return len(todo)


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a file through a temp file next to `dst` and a rename."""
    with atomic_path(dst, suffix=TEMP_SUFFIX) as tmp:
        shutil.copyfile(src, tmp)


def build_tiny_clip(out_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random HF `CLIPModel` dir (tests, smoke runs).

    The tokenizer is the one at `tokenizer_dir` (e.g. the tiny zoo's byte-level BPE), saved into
    the dir: it stands in for `CLIPTokenizerFast`, and the text tower's vocabulary and eos id
    follow it.

    Args:
        out_dir: destination directory.
        tokenizer_dir: an HF tokenizer directory.
        seed: weight-init seed.

    Returns:
        `out_dir`.
    """
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    from dreamray.model.layouts import clip_processor

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    text = dict(
        small,
        vocab_size=len(tok),
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    config = CLIPConfig(
        text_config=text, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16
    )
    rng = torch.random.get_rng_state()  # building must not move the caller's global RNG
    torch.manual_seed(seed)
    try:
        CLIPModel(config).save_pretrained(out_dir)
    finally:
        torch.random.set_rng_state(rng)
    tok.save_pretrained(out_dir)
    clip_processor(CLIPImageProcessor, 32).save_pretrained(out_dir)
    return Path(out_dir)
