"""Mask decoder: two-way transformer + hypernetwork mask heads + IoU head (published names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seganypet.modeling.common import MLP, LayerNorm3d
from seganypet.modeling.config import ModelConfig
from seganypet.modeling.transformer import TwoWayTransformer3D


def _gelu(x: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``act(x)`` for an exact ``nn.GELU``, in place on a fresh intermediate when autograd allows it
    (saves allocating, page-faulting and writing a second 6 MB buffer per click on CPU)."""
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if isinstance(act, nn.GELU) and act.approximate == "none" and not needs_grad:
        return torch.ops.aten.gelu_(x)
    return act(x)


class MaskDecoder3D(nn.Module):
    """``forward(image_embeddings (B|1, C, g, g, g), image_pe (1, C, g, g, g),
    sparse_prompt_embeddings (B, T, C), dense_prompt_embeddings (B, C, g, g, g), multimask_output)
    -> (low_res_logits (B, 1|K, 4g, 4g, 4g), iou (B, 1|K))`` with K = num_multimask_outputs.

    ``multimask_output=False`` returns mask 0, True returns masks 1..K (published behaviour).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.transformer_dim = dim
        self.transformer = TwoWayTransformer3D(
            depth=config.decoder_transformer_depth,
            embedding_dim=dim,
            num_heads=config.decoder_transformer_num_heads,
            mlp_dim=config.decoder_transformer_mlp_dim,
            attention_downsample_rate=config.decoder_attention_downsample_rate,
        )
        self.num_multimask_outputs = config.num_multimask_outputs
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks ``(B, K+1, 4g, 4g, 4g)`` and IoU predictions ``(B, K+1)``."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)
        if image_embeddings.shape[0] != tokens.shape[0]:
            src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        else:
            src = image_embeddings
        src = src + dense_prompt_embeddings
        if image_pe.shape[0] != tokens.shape[0]:
            pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        else:
            pos_src = image_pe
        b, c, x, y, z = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = self._upscale_and_mask(src.reshape(b, x, y, z, c), hyper_in)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred

    def _upscale_and_mask(self, src: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` then ``hyper_in · upscaled``, computed channels-last with matmuls.

        ``src (B, x, y, z, C)`` (tokens after the transformer), ``hyper_in (B, K, C/8)`` ->
        masks ``(B, K, 4x, 4y, 4z)``. Same numbers as ConvT(k2 s2) -> LayerNorm3d -> GELU ->
        ConvT(k2 s2) -> GELU -> ``hyper_in @ upscaled``, without the channels-first copies.
        """
        ct1, ln, act1, ct2, act2 = self.output_upscaling
        b, x, y, z, c = src.shape
        c4, c8 = ct1.out_channels, ct2.out_channels
        # (voxel, (c4, 2, 2, 2)); the biases go into the GEMMs (repeated per output column)
        t = torch.addmm(ct1.bias.repeat_interleave(8), src.reshape(-1, c), ct1.weight.reshape(c, c4 * 8))
        t = (
            t.reshape(b, x, y, z, c4, 2, 2, 2)
            .permute(0, 1, 5, 2, 6, 3, 7, 4)
            .reshape(b, 2 * x, 2 * y, 2 * z, c4)
        )
        t = _gelu(F.layer_norm(t, (c4,), ln.weight, ln.bias, ln.eps), act1)
        w2 = ct2.weight.permute(0, 2, 3, 4, 1).reshape(c4, 8 * c8)  # (c4, (2, 2, 2, c8))
        t2 = torch.mm(t.reshape(-1, c4), w2)  # bias added in place: no broadcast copy of the output
        t2 = _gelu(t2.add_(ct2.bias.repeat(8)), act2).reshape(b, -1, c8)  # (B, voxel·8, c8)
        masks = torch.bmm(t2, hyper_in.transpose(1, 2))  # (B, (2x, 2y, 2z, 2, 2, 2), K)
        k = masks.shape[-1]
        masks = masks.reshape(b, 2 * x, 2 * y, 2 * z, 2, 2, 2, k).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return masks.reshape(b, k, 4 * x, 4 * y, 4 * z)
