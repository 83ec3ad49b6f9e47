"""Prompt encoder: points (+ our box extension) -> sparse tokens, mask prompt -> dense embedding.

Coordinates are crop voxel indices ``(i, j, k)`` (float, 0..S-1 for an S³ crop, S = 128), the same
axis order as the crop array. Parameter names are the published ones; the box extension adds
``box_corner_embeddings.weight`` (2, C), which is not in the published key set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seganypet.errors import PromptError
from seganypet.modeling.common import LayerNorm3d, conv_kernel_eq_stride
from seganypet.modeling.config import ModelConfig


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features: c in [0,1]³ -> [sin, cos, sin](2π (2c−1) G), G (3, C/3)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((3, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def forward(self, size: tuple[int, int, int], axis_quirk: bool = True) -> torch.Tensor:
        """Encoding ``(C, x, y, z)`` of the voxel centres of a grid. With ``axis_quirk`` (the published
        behaviour) the feature at ``[:, a, b, c]`` encodes the normalised point ``(b, a, c)``; without
        it, the point ``(a, b, c)`` — the same encoding a click at that voxel gets."""
        x, y, z = size
        grid = torch.ones((x, y, z), device=self.positional_encoding_gaussian_matrix.device)
        y_embed = (grid.cumsum(dim=0) - 0.5) / y
        x_embed = (grid.cumsum(dim=1) - 0.5) / x
        z_embed = (grid.cumsum(dim=2) - 0.5) / z
        coords = [x_embed, y_embed, z_embed] if axis_quirk else [y_embed, x_embed, z_embed]
        pe = self._pe_encoding(torch.stack(coords, dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int, int]
    ) -> torch.Tensor:
        """``coords_input (B, N, 3)`` in crop voxels (+0.5 already added) -> ``(B, N, C)``."""
        size = torch.tensor(image_size, dtype=torch.float32, device=coords_input.device)
        return self._pe_encoding(coords_input.to(torch.float32) / size)


class PromptEncoder3D(nn.Module):
    """``forward(points=(coords (B,N,3), labels (B,N)), boxes=(B,2,3)|None, masks=(B,1,M,M,M)|None)
    -> (sparse (B, T, C), dense (B, C, g, g, g))``.

    Labels: 1 positive, 0 negative, −1 padding (ignored). Without a box, a padding point is appended
    (published behaviour). A box is its two opposite corners in crop voxel coordinates; each corner
    is encoded like a point plus its own learned corner embedding (extension).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.embed_dim = c.prompt_embed_dim
        g = c.grid_size
        self.image_embedding_size = (g, g, g)
        self.input_image_size = (c.image_size,) * 3
        self.pe_layer = PositionEmbeddingRandom3D(c.prompt_embed_dim // 3)
        self.dense_pe_axis_quirk = c.dense_pe_axis_quirk
        self.num_point_embeddings = 2
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, c.prompt_embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, c.prompt_embed_dim)
        self.mask_input_size = (4 * g,) * 3
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, c.mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(c.mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(c.mask_in_chans // 4, c.mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(c.mask_in_chans),
            nn.GELU(),
            nn.Conv3d(c.mask_in_chans, c.prompt_embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, c.prompt_embed_dim)
        self.box_corner_embeddings: nn.Embedding | None = (
            nn.Embedding(2, c.prompt_embed_dim) if c.box_embeddings else None
        )

    def get_dense_pe(self) -> torch.Tensor:
        """Dense positional encoding ``(1, C, g, g, g)`` of the embedding grid (the published axis
        quirk when ``config.dense_pe_axis_quirk``)."""
        return self.pe_layer(self.image_embedding_size, self.dense_pe_axis_quirk).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points.to(torch.float32) + 0.5
        if pad:
            padding_point = torch.zeros((points.shape[0], 1, 3), device=points.device)
            padding_label = -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)
            points = torch.cat([points, padding_point], dim=1)
            labels = torch.cat([labels, padding_label], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.expand_as(emb), emb)
        emb = (
            emb + (lab == 0) * self.point_embeddings[0].weight + (lab == 1) * self.point_embeddings[1].weight
        )
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        if self.box_corner_embeddings is None:
            raise PromptError("This model has no box embeddings; give points instead of a box.")
        corners = boxes.to(torch.float32).reshape(-1, 2, 3) + 0.5
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        return emb + self.box_corner_embeddings.weight[None]

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        ds = self.mask_downscaling  # the k2 s2 / k1 convolutions as matmuls (same numbers)
        x = ds[2](ds[1](conv_kernel_eq_stride(masks.to(ds[0].weight.dtype), ds[0])))
        x = ds[5](ds[4](conv_kernel_eq_stride(x, ds[3])))
        return conv_kernel_eq_stride(x, ds[6])

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(
                bs, -1, *self.image_embedding_size
            )
        return sparse, dense
