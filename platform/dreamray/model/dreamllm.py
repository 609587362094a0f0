"""DreamLLM: any HF causal LM, composed with a vision plugin, dream queries and a diffusion head.

The pieces a generation loop reuses are public methods: `embed` (token ids + images ->
``inputs_embeds``), `run_llm`, `dream_hidden` / `condition` (hidden states -> UNet condition),
`dream_block_embeds` (what to feed after a sampled ``<dream_start>``), `unconditional_hidden` (the
CFG branch) and ``stable_diffusion_head.denoise`` / ``.encode`` / ``.scheduler``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dreamray.model import artifact, reference_layout, shards
from dreamray.model import blocks as blk
from dreamray.model.diffusion import StableDiffusionHead
from dreamray.model.losses import lm_loss_sum
from dreamray.model.packed_attention import run_packed_llm
from dreamray.model.plugin_config import DreamLLMConfig
from dreamray.model.plugins import CLIPVisionEmbedding, DreamEmbedding
from dreamray.model.reference_config import TowerPaths
from dreamray.model.tokens import SpecialTokenIds


@dataclass
class DreamLLMOutput:
    """What a training forward returns.

    `loss` combines the batch means (lm over its supervised tokens, vm over its dream images):
    what a caller that normalises per batch backpropagates. The sums and counts let the train
    loop normalise over a whole optimizer step instead (`dreamray.train.loop`).
    """

    loss: torch.Tensor
    lm_loss: torch.Tensor
    vm_loss: torch.Tensor
    lm_loss_sum: torch.Tensor
    vm_loss_sum: torch.Tensor
    num_lm_tokens: torch.Tensor
    num_images: int
    num_dreams: int


class DreamLLM(nn.Module):
    """A causal LM that reads images (CLIP features in IMG blocks) and dreams them (DRM blocks)."""

    def __init__(
        self,
        llm: nn.Module,
        tokenizer: Any,
        clip_vision_embedding: CLIPVisionEmbedding,
        dream_embedding: DreamEmbedding,
        stable_diffusion_head: StableDiffusionHead,
        config: DreamLLMConfig,
    ) -> None:
        """Compose the parts (see `dreamray.model.build.build_dreamllm` to load them).

        Args:
            llm: an HF causal LM whose embeddings cover the tokenizer's special tokens.
            tokenizer: its tokenizer, with DreamLLM's special tokens.
            clip_vision_embedding: the vision plugin.
            dream_embedding: the dream queries.
            stable_diffusion_head: the diffusion head.
            config: the plugin configuration (saved with the model).

        Raises:
            ValueError: when the widths of the parts do not fit together.
        """
        super().__init__()
        self.llm = llm
        self.clip_vision_embedding = clip_vision_embedding
        self.dream_embedding = dream_embedding
        self.stable_diffusion_head = stable_diffusion_head
        self.tokenizer = tokenizer
        self.dreamllm_config = config
        self.token_ids = SpecialTokenIds.from_tokenizer(tokenizer)
        self._check_shapes()

    def _check_shapes(self) -> None:
        rows = self.llm.get_input_embeddings().num_embeddings
        problems = []
        if rows < len(self.tokenizer):
            problems.append(f"LLM has {rows} embedding rows < tokenizer size {len(self.tokenizer)}")
        dim = self.hidden_size
        if self.dream_embedding.dream_queries.shape[-1] != dim:
            problems.append(f"dream queries width {self.dream_embedding.dream_queries.shape[-1]}")
        vision = self.clip_vision_embedding
        if vision.projector.in_dim != vision.clip_vision_model.config.hidden_size:
            problems.append("vision projector input != CLIP hidden size")
        if vision.projector.out_dim != dim:
            problems.append(f"vision projector output width {vision.projector.out_dim}")
        head = self.stable_diffusion_head
        cross = head.unet.config.cross_attention_dim
        if (head.projector.in_dim, head.projector.out_dim) != (dim, cross):
            problems.append(f"condition projector is not {dim} -> unet cross_attention_dim {cross}")
        if problems:
            raise ValueError(f"DreamLLM parts do not fit (llm hidden {dim}): {problems}")

    @property
    def hidden_size(self) -> int:
        """The LLM's hidden width."""
        # embedding_dim, not weight.shape: under ZeRO-3 a partitioned weight is empty
        return int(self.llm.get_input_embeddings().embedding_dim)

    @property
    def num_patches(self) -> int:
        """Slots of an IMG block."""
        return self.clip_vision_embedding.num_patches

    @property
    def num_queries(self) -> int:
        """Slots of a DRM block (Q)."""
        return self.dream_embedding.num_queries

    def image_blocks(self, input_ids: torch.Tensor, allow_open_tail: bool = False) -> blk.Blocks:
        """The checked IMG blocks of a batch (see `blocks.find_blocks`)."""
        t = self.token_ids
        return blk.find_blocks(
            input_ids, "IMG", t.im_start, t.im_patch, t.im_end, self.num_patches, allow_open_tail
        )

    def dream_blocks(self, input_ids: torch.Tensor, allow_open_tail: bool = False) -> blk.Blocks:
        """The checked DRM blocks of a batch (see `blocks.find_blocks`)."""
        t = self.token_ids
        return blk.find_blocks(
            input_ids,
            "DRM",
            t.dream_start,
            t.im_patch,
            t.dream_end,
            self.num_queries,
            allow_open_tail,
        )

    def embed(
        self,
        input_ids: torch.Tensor,
        clip_pixel_values: torch.Tensor | None,
        allow_open_tail: bool = False,
        every_tower: bool = False,
        clip_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with CLIP features in the IMG slots and the queries in the DRM slots.

        With `every_tower`, CLIP and the queries run exactly once whatever the batch holds (a
        zero image / the queries, added times 0, when it has no block of that kind): every rank
        then runs the same modules in the same order and gets its gradients in the same order,
        which DDP, ZeRO-2's gradient buckets and ZeRO-3's parameter gathers all rely on.

        Args:
            input_ids: ``[B, L]``.
            clip_pixel_values: ``[N_img, 3, H, W]`` in block order, or None when there are none.
            allow_open_tail: tolerate a block cut off by the sequence end (generation).
            every_tower: run both plugins even without blocks (the training forward).
            clip_features: ``[N_img, P, C]`` precomputed tower features
                (`CLIPVisionEmbedding.tower_features`) instead of `clip_pixel_values`.

        Returns:
            ``inputs_embeds [B, L, D]``.

        Raises:
            BlockError: malformed blocks, or a block count that differs from the images given.
        """
        images = self.image_blocks(input_ids, allow_open_tail)
        dreams = self.dream_blocks(input_ids, allow_open_tail)
        if not allow_open_tail:
            blk.check_patch_count(input_ids, self.token_ids.im_patch, [images, dreams])
        given, name = blk.images_given(clip_pixel_values, clip_features, "clip")
        num_images = 0 if given is None else given.shape[0]
        blk.check_image_count(images, num_images, input_ids.shape[0], name)
        vision = self.clip_vision_embedding
        features = queries = None
        if num_images:
            features = vision(clip_pixel_values, clip_features)
        elif every_tower and clip_features is not None:
            features = vision(None, vision.dummy_features(input_ids.device))
        elif every_tower:
            features = vision(vision.dummy_input(input_ids.device))
        if len(dreams) or every_tower:
            queries = self.dream_embedding(max(len(dreams), 1))
        embeds = self.llm.get_input_embeddings()(input_ids)
        embeds = _splice_or_touch(embeds, images, features)
        return _splice_or_touch(embeds, dreams, queries)

    def run_llm(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, **llm_kwargs: Any
    ) -> tuple[Any, torch.Tensor]:
        """The causal LM on embeddings.

        Args:
            inputs_embeds: ``[B, L, D]``.
            attention_mask: ``[B, L]`` or None.
            **llm_kwargs: passed to the HF model (e.g. ``past_key_values``, ``use_cache``).

        Returns:
            ``(hf_output, last_hidden)``: last_hidden is the final layer's output after the
            final norm (HF's ``hidden_states[-1]``), ``[B, L, D]``.
        """
        llm_kwargs.setdefault("use_cache", False)
        out = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            output_hidden_states=True,
            **llm_kwargs,
        )
        return out, out.hidden_states[-1]

    def dream_hidden(self, hidden: torch.Tensor, dreams: blk.Blocks) -> torch.Tensor:
        """Hidden states at the dream slots: ``[N_dm, Q, D]``."""
        return blk.gather(hidden, dreams)

    def condition(self, dream_hidden: torch.Tensor) -> torch.Tensor:
        """Dream hidden states -> the UNet's ``encoder_hidden_states`` ``[N, Q, C]``."""
        return self.stable_diffusion_head.project(dream_hidden)

    def dream_block_embeds(self, batch_size: int) -> torch.Tensor:
        """``[emb(<dream_start>), Q queries, emb(<dream_end>)]`` per row: ``[B, Q + 2, D]``."""
        t = self.token_ids
        device = self.dream_embedding.dream_queries.device
        ends = self.llm.get_input_embeddings()(
            torch.tensor([t.dream_start, t.dream_end], device=device)
        )
        queries = self.dream_embedding(batch_size).to(ends.dtype)
        ends = ends[None].expand(batch_size, -1, -1)
        return torch.cat([ends[:, :1], queries, ends[:, 1:]], dim=1)

    def unconditional_hidden(self) -> torch.Tensor:
        """Dream hidden states of the empty prompt ``<s> DRM``: the CFG unconditional branch.

        Returns:
            ``[1, Q, D]``.
        """
        device = self.dream_embedding.dream_queries.device
        ids = [self.token_ids.bos, *self.token_ids.dream_block(self.num_queries)]
        input_ids = torch.tensor([ids], device=device)
        embeds = self.embed(input_ids, None)
        _, hidden = self.run_llm(embeds, torch.ones_like(input_ids))
        return self.dream_hidden(hidden, self.dream_blocks(input_ids))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        clip_pixel_values: torch.Tensor | None,
        sd_pixel_values: torch.Tensor | None,
        *,
        lm_weight: float,
        vm_weight: float,
        position_ids: torch.Tensor | None = None,
        clip_features: torch.Tensor | None = None,
        sd_latent_moments: torch.Tensor | None = None,
    ) -> DreamLLMOutput:
        """One training forward over the batch contract.

        Every module runs once per call in a fixed order (see `embed` and `_vm_loss`): without
        blocks of a kind, a stand-in goes through the same modules and enters the loss times 0,
        so every trainable parameter gets a gradient at the same point of backward on every rank
        (DDP, ZeRO-2 and ZeRO-3 require the same parameters and collectives in the same order).

        Args:
            input_ids, attention_mask, labels: ``[B, L]``.
            clip_pixel_values: ``[N_img, 3, H, W]`` for the IMG blocks, or None.
            sd_pixel_values: ``[N_dm, 3, R, R]`` in [-1, 1], the DRM blocks' targets, or None.
            lm_weight, vm_weight: loss = lm_weight * lm_loss + vm_weight * vm_loss.
            position_ids: ``[B, L]`` of a packed batch (`dreamray.data.packing`): each sample's
                positions restart at 0, and no token attends across a sample. None: unpacked.
            clip_features: precomputed CLIP tower features ``[N_img, P, C]`` instead of
                `clip_pixel_values` (a train stage with `data.features`).
            sd_latent_moments: precomputed VAE posterior parameters ``[N_dm, 2c, h, w]``
                instead of `sd_pixel_values`.

        Returns:
            The batch-mean losses, the sums they divide and the counts.

        Raises:
            BlockError: when blocks are malformed or their counts differ from the images supplied.
            ValueError: a packed batch for an LLM attention that cannot keep samples apart.
        """
        dreams = self.dream_blocks(input_ids)
        targets, name = blk.images_given(sd_pixel_values, sd_latent_moments, "sd")
        num_dreams = 0 if targets is None else targets.shape[0]
        blk.check_image_count(dreams, num_dreams, input_ids.shape[0], name)
        embeds = self.embed(input_ids, clip_pixel_values, every_tower=True,
                            clip_features=clip_features)
        if position_ids is None:
            out, hidden = self.run_llm(embeds, attention_mask)
            logits = out.logits
        else:
            logits, hidden = run_packed_llm(self, embeds, position_ids)
        lm_sum, num_tokens = lm_loss_sum(logits, labels)
        vm_sum = self._vm_loss_sum(hidden, dreams, sd_pixel_values, sd_latent_moments)
        lm, vm = lm_sum / num_tokens.clamp(min=1), vm_sum / max(num_dreams, 1)
        loss = lm_weight * lm + vm_weight * vm
        given, _ = blk.images_given(clip_pixel_values, clip_features, "clip")
        num_images = 0 if given is None else given.shape[0]
        return DreamLLMOutput(loss, lm, vm, lm_sum, vm_sum, num_tokens, num_images, num_dreams)

    def _vm_loss_sum(self, hidden, dreams: blk.Blocks, sd_pixel_values, moments) -> torch.Tensor:
        """The diffusion loss summed over the dream images; without dream blocks, the same
        modules in the same order, times 0.

        The stand-in condition is read from the LLM's output like a real one (the first row's
        first Q positions), so the projector, the queries and the LLM get their (zero) gradients
        at the same point of backward as on a rank with dream blocks.
        """
        head = self.stable_diffusion_head
        cfg = self.dreamllm_config
        if len(dreams):
            cond, pixels, weight = self.dream_hidden(hidden, dreams), sd_pixel_values, 1.0
        elif moments is not None:
            cond, pixels, weight = hidden[:1, : self.num_queries], None, 0.0
            moments = head.dummy_moments(hidden.device)
        else:
            cond = hidden[:1, : self.num_queries]
            pixels, weight = head.dummy_input(hidden.device), 0.0
        if self.training and cfg.condition_dropout > 0:
            drop = torch.rand(cond.shape[0], device=cond.device) < cfg.condition_dropout
            uncond = self.unconditional_hidden().to(cond.dtype)[:, : cond.shape[1]]
            cond = torch.where(drop[:, None, None], uncond, cond)
        return weight * head.per_image_loss(cond, pixels, cfg.snr_gamma, moments).sum()

    def frozen_towers(self) -> tuple[nn.Module, ...]:
        """CLIP, VAE and UNet: the towers that never train."""
        head = self.stable_diffusion_head
        return (self.clip_vision_embedding.clip_vision_model, head.vae, head.unet)

    def train(self, mode: bool = True) -> DreamLLM:
        """Set training mode, keeping the frozen towers in eval mode (no dropout there)."""
        super().train(mode)
        for tower in self.frozen_towers():
            tower.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the LLM's decoder layers in backward (non-reentrant)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):  # transformers >= 5's name
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.llm.config.use_cache = False

    def save_pretrained(
        self, out_dir: str | Path, state_dict: dict | None = None, *,
        layout: Literal["dreamray", "reference"] = "dreamray",
        max_shard_size: int | str = shards.DEFAULT_MAX_SHARD_SIZE,
        towers: TowerPaths | None = None,
    ) -> Path:
        """Write the model's dir.

        Args:
            out_dir: the dir; replaced if it exists.
            state_dict: the full state dict to save instead of ``self.state_dict()``.
            layout: ``dreamray`` (`dreamray.model.artifact.save_dreamllm`) or ``reference``,
                the reference's own layout (`dreamray.model.reference_layout.save_reference`).
            max_shard_size: the LLM's weights above this size are sharded.
            towers: the tower dirs the reference layout records (required for it).

        Returns:
            The dir.

        Raises:
            ValueError: on an unknown layout, or the reference layout without `towers`.
        """
        if layout == "dreamray":
            return artifact.save_dreamllm(self, out_dir, state_dict, max_shard_size)
        if layout != "reference" or towers is None:
            raise ValueError(f"layout must be 'dreamray' or 'reference' (with towers=), got "
                             f"{layout!r}, towers={towers!r}")
        return reference_layout.save_reference(self, out_dir, towers, state_dict, max_shard_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> DreamLLM:
        """Load a dir of either layout; see `dreamray.model.artifact.load_dreamllm` and
        `dreamray.model.reference_layout.load_reference` (chosen by its ``config.json``)."""
        if reference_layout.is_reference_dir(path):
            return reference_layout.load_reference(cls, path, **kwargs)
        return artifact.load_dreamllm(cls, path, **kwargs)


def _splice_or_touch(
    embeds: torch.Tensor, blocks: blk.Blocks, values: torch.Tensor | None
) -> torch.Tensor:
    """Write `values` into the blocks; with none, add them times 0 (keeps them in the graph)."""
    if values is None:
        return embeds
    if len(blocks):
        return blk.splice(embeds, blocks, values)
    return embeds + 0.0 * values.sum().to(embeds.dtype)

