"""The vision plugin, the dream queries and the projectors, with the reference's state-dict keys.

Keys (they are the artifact files' keys, so released DreamLLM plugin files load as they are):
`CLIPVisionEmbedding`: ``clip_vision_model.vision_model.*``, ``projector.projector.*``;
`DreamEmbedding`: ``dream_queries``.
"""

from __future__ import annotations

import torch
from torch import nn

from dreamray.config.specs import ProjectorSpec

INIT_STD = 0.02  # the reference initialises projectors and queries with N(0, 0.02)


class Projector(nn.Module):
    """A linear layer, or an MLP of `depth` linear layers with GELU between them.

    The layers live in ``self.projector`` so the keys are ``projector.weight`` (linear) or
    ``projector.<i>.weight`` (MLP), matching the reference's ``LinearProjector``.
    """

    def __init__(self, spec: ProjectorSpec, in_dim: int, out_dim: int, bias: bool) -> None:
        """Build the projector.

        Args:
            spec: linear or MLP, and the MLP's depth.
            in_dim: input width.
            out_dim: output width (every MLP layer after the first is out_dim -> out_dim).
            bias: whether the linear layers have a bias.
        """
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        if spec.kind == "linear":
            self.projector: nn.Module = nn.Linear(in_dim, out_dim, bias=bias)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
            for _ in range(spec.depth - 1):
                layers += [nn.GELU(), nn.Linear(out_dim, out_dim, bias=bias)]
            self.projector = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project the last dimension, in the projector's own dtype."""
        return self.projector(x.to(self.dtype))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the projector's weights."""
        return next(self.parameters()).dtype


def clip_patch_features(
    clip_vision_model: nn.Module, pixel_values: torch.Tensor, select_layer: int
) -> torch.Tensor:
    """One CLIP layer's patch features: the tower's part of `CLIPVisionEmbedding` (and what a
    precompute stage runs, `dreamray.data.feature_compute`).

    Args:
        clip_vision_model: an HF ``CLIPVisionModel``.
        pixel_values: ``[N, 3, H, W]`` CLIP-normalised images.
        select_layer: the ``hidden_states`` entry (-2: the penultimate layer).

    Returns:
        ``[N, num_patches, hidden]`` in the tower's dtype, CLS dropped.
    """
    tower_dtype = next(clip_vision_model.parameters()).dtype
    out = clip_vision_model(pixel_values=pixel_values.to(tower_dtype), output_hidden_states=True)
    return out.hidden_states[select_layer][:, 1:]


class CLIPVisionEmbedding(nn.Module):
    """Frozen CLIP vision tower + projector: images -> one LLM embedding per patch."""

    def __init__(
        self, clip_vision_model: nn.Module, projector: Projector, select_layer: int
    ) -> None:
        """Wrap a CLIP vision model and its projector.

        Args:
            clip_vision_model: an HF ``CLIPVisionModel``.
            projector: clip hidden size -> LLM hidden size.
            select_layer: which ``hidden_states`` entry to read (-2: the penultimate layer).
        """
        super().__init__()
        self.clip_vision_model = clip_vision_model
        self.projector = projector
        self.select_layer = select_layer

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (CLS excluded): (image_size / patch_size) ** 2."""
        cfg = self.clip_vision_model.config
        return (cfg.image_size // cfg.patch_size) ** 2

    @property
    def image_size(self) -> int:
        """The square input side the tower expects."""
        return int(self.clip_vision_model.config.image_size)

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(num_patches, clip hidden size)``: one image's `tower_features`."""
        return self.num_patches, int(self.clip_vision_model.config.hidden_size)

    def tower_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen tower's output that the projector reads (what a precompute stage stores).

        Args:
            pixel_values: ``[N, 3, H, W]`` CLIP-normalised images.

        Returns:
            ``[N, num_patches, clip hidden]``: the selected layer's patch features (CLS
            dropped), in the tower's dtype. Not under no_grad: a stage may train the tower
            (the `vision_encoder` group).
        """
        return clip_patch_features(self.clip_vision_model, pixel_values, self.select_layer)

    def forward(
        self, pixel_values: torch.Tensor | None, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Project the selected layer's patch features, from pixels or precomputed.

        Args:
            pixel_values: ``[N, 3, H, W]`` CLIP-normalised images; None when `features` is given.
            features: ``[N, num_patches, clip hidden]`` from `tower_features` (a precompute
                stage's feature shards): the tower does not run.

        Returns:
            ``[N, num_patches, llm_dim]`` features (CLS dropped).
        """
        if features is None:
            features = self.tower_features(pixel_values)
        return self.projector(features)

    def dummy_input(self, device: torch.device) -> torch.Tensor:
        """One zero image, for the zero-weighted pass of a batch without images."""
        return torch.zeros(1, 3, self.image_size, self.image_size, device=device)

    def dummy_features(self, device: torch.device) -> torch.Tensor:
        """Zero tower features of one image: the zero-weighted pass on precomputed features."""
        return torch.zeros(1, *self.feature_shape, device=device)


class DreamEmbedding(nn.Module):
    """The learned dream queries, ``Parameter(1, Q, llm_dim)``."""

    def __init__(self, num_queries: int, dim: int) -> None:
        """Create the queries, N(0, 0.02).

        Args:
            num_queries: Q (64 in the paper).
            dim: the LLM hidden size.
        """
        super().__init__()
        # kept as an int: under ZeRO-3 the parameter's .shape is empty outside its forward
        self.num_queries = num_queries
        self.dream_queries = nn.Parameter(torch.randn(1, num_queries, dim) * INIT_STD)

    def forward(self, batch_size: int) -> torch.Tensor:
        """The queries repeated for `batch_size` blocks: ``[batch_size, Q, dim]``."""
        return self.dream_queries.expand(batch_size, -1, -1)
