"""Hyper-parameters of the SAM-Med3D / SegAnyPET network (:class:`ModelConfig`).

The field names and meanings are those of ``../shared/reference/config.json`` (the published
network's hyper-parameters); the extra fields at the end are ours (box extension, input
normalisation, implementation switches). A config round-trips through a plain ``dict``
(:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`), which is how it is stored inside our
checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from seganypet.errors import ModelError

NORMALIZATIONS = ("zscore_nonzero", "suv_clip")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one network.

    Sizes: the input crop is ``(B, 1, image_size, image_size, image_size)``; the image embedding is
    ``(B, prompt_embed_dim, g, g, g)`` with ``g = image_size // patch_size`` (8 for 128/16); low-res
    mask logits are ``(B, 1|num_multimask_outputs, 4g, 4g, 4g)`` (32³).
    """

    image_size: int = 128
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    layer_norm_eps: float = 1e-6
    prompt_embed_dim: int = 384
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_transformer_depth: int = 2
    decoder_transformer_mlp_dim: int = 2048
    decoder_transformer_num_heads: int = 8
    decoder_attention_downsample_rate: int = 2
    # --- ours -------------------------------------------------------------------------------
    #: intensity normalisation the Session applies to a crop before the encoder
    #: ("zscore_nonzero": the published z-score over voxels > 0; "suv_clip": see normalization.py)
    normalization: str = "zscore_nonzero"
    #: the prompt encoder has the two learned box-corner embeddings (extension, not published)
    box_embeddings: bool = True
    #: the box embeddings were trained (a checkpoint says so); False for the published weights
    supports_boxes: bool = False
    #: windowed blocks use the exact closed-form padding attention (False: the published padded one)
    fast_window: bool = True
    #: keep the published dense-PE axis quirk (``get_dense_pe()[:, :, a, b, c]`` encodes the point
    #: ``(b, a, c)``). The published weights need it; for a model trained from scratch it makes the
    #: decoder look for an off-centre click at the i/j-transposed position, so our presets turn it off.
    dense_pe_axis_quirk: bool = True
    #: free-form name of the preset this config came from ("" when unknown)
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes))
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append("encoder_embed_dim must be divisible by encoder_num_heads")
        if self.prompt_embed_dim % 3:
            problems.append("prompt_embed_dim must be divisible by 3 (sin/cos/sin positional encoding)")
        if self.prompt_embed_dim % self.decoder_transformer_num_heads:
            problems.append("prompt_embed_dim must be divisible by decoder_transformer_num_heads")
        inner = self.prompt_embed_dim // self.decoder_attention_downsample_rate
        if inner % self.decoder_transformer_num_heads:
            problems.append(
                "prompt_embed_dim / decoder_attention_downsample_rate must be divisible by "
                "decoder_transformer_num_heads"
            )
        if self.prompt_embed_dim % 8:
            problems.append("prompt_embed_dim must be divisible by 8 (output upscaling)")
        if self.mask_in_chans % 4:
            problems.append("mask_in_chans must be divisible by 4")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            problems.append(f"encoder_global_attn_indexes {bad} outside 0..{self.encoder_depth - 1}")
        if self.normalization not in NORMALIZATIONS:
            problems.append(f"normalization {self.normalization!r} is not one of {NORMALIZATIONS}")
        if self.supports_boxes and not self.box_embeddings:
            problems.append("supports_boxes needs box_embeddings")
        if problems:
            raise ModelError("Invalid model config: " + "; ".join(problems) + ".")

    @property
    def grid_size(self) -> int:
        """Tokens per axis of the image embedding (8 for a 128³ crop and 16³ patches)."""
        return self.image_size // self.patch_size

    @property
    def mask_size(self) -> int:
        """Edge of the low-res mask logits and of the mask prompt (4 × grid, 32)."""
        return 4 * self.grid_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists instead of tuples)."""
        out = dataclasses.asdict(self)
        out["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict such as ``config.json``; unknown keys are an error (typos must not pass)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"Unknown model config field(s): {', '.join(unknown)}.")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def num_parameters_hint(self) -> str:
        """Short human description, e.g. ``"ViT 768x12 (12 heads), prompt 384"``."""
        return (
            f"ViT {self.encoder_embed_dim}x{self.encoder_depth} ({self.encoder_num_heads} heads, "
            f"global {list(self.encoder_global_attn_indexes)}, window {self.encoder_window_size}), "
            f"prompt {self.prompt_embed_dim}"
        )
