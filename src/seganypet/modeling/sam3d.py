"""The whole network: ``Sam3D`` holds ``image_encoder``, ``prompt_encoder``, ``mask_decoder``."""

from __future__ import annotations

import torch
from torch import nn

from seganypet.errors import PromptError
from seganypet.modeling.config import ModelConfig
from seganypet.modeling.image_encoder import ImageEncoderViT3D
from seganypet.modeling.mask_decoder import MaskDecoder3D
from seganypet.modeling.prompt_encoder import PromptEncoder3D

#: state-dict keys we add on top of the published network (the box extension)
EXTENSION_KEYS = ("prompt_encoder.box_corner_embeddings.weight",)


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """True when ``device`` computes bfloat16 natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


class Sam3D(nn.Module):
    """SAM-Med3D / SegAnyPET network. Build it with :func:`seganypet.build.build_model`.

    The submodules' forward signatures are the published ones; :meth:`encode` and :meth:`predict`
    are conveniences for the inference and training code.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT3D(config)
        self.prompt_encoder = PromptEncoder3D(config)
        self.mask_decoder = MaskDecoder3D(config)
        #: where the weights came from (checkpoint format, training data, version, ...)
        self.metadata: dict = {}

    @property
    def supports_boxes(self) -> bool:
        """True only when the box embeddings exist and a checkpoint says they were trained."""
        return bool(self.config.box_embeddings and self.config.supports_boxes)

    @property
    def device(self) -> torch.device:
        return self.image_encoder.pos_embed.device

    @property
    def fast_window(self) -> bool:
        """Encoder implementation switch (see :mod:`seganypet.modeling.image_encoder`)."""
        return self.image_encoder.fast_window

    @fast_window.setter
    def fast_window(self, value: bool) -> None:
        self.image_encoder.fast_window = value

    def encode(self, crop: torch.Tensor, bfloat16: bool = False) -> torch.Tensor:
        """Embedding ``(B, C, g, g, g)`` float32 of normalised crops ``(B, 1, S, S, S)`` or ``(S, S, S)``.

        ``bfloat16=True`` runs the encoder under bf16 autocast (logits within ~1e-2 of float32). Only
        worth it where the hardware has bf16 (:func:`bf16_native`: AVX512-BF16 / AMX CPUs, GPUs);
        elsewhere it is emulated and several times slower than float32.
        """
        if crop.dim() == 3:
            crop = crop[None, None]
        s = self.config.image_size
        if crop.dim() != 5 or tuple(crop.shape[1:]) != (1, s, s, s):
            raise PromptError(
                f"The encoder needs crops of shape (B, 1, {s}, {s}, {s}), got {tuple(crop.shape)}."
            )
        crop = crop.to(self.device, torch.float32)
        if bfloat16:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.image_encoder(crop).float()
        return self.image_encoder(crop)

    def predict(
        self,
        image_embedding: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for one embedding.

        - ``image_embedding``: ``(B, C, g, g, g)`` from :meth:`encode` (B = 1 usually).
        - ``points``: ``(B, N, 3)`` or ``(N, 3)`` float crop voxel coordinates ``(i, j, k)``; ``labels``
          ``(B, N)`` or ``(N,)``: 1 positive, 0 negative. Both None for a box-only prompt.
        - ``boxes``: ``(B, 2, 3)`` or ``(2, 3)``: two opposite corners, crop voxel coordinates. Raises
          :class:`PromptError` when the model has no box embeddings.
        - ``mask_input``: previous low-res logits ``(B, 1, 4g, 4g, 4g)``; None means all zeros, which is
          what the published interactive inference gives the first click.
        - returns ``(low_res_logits (B, 1|K, 4g, 4g, 4g), iou (B, 1|K))``; K = 3 with ``multimask``.
          Upsample the logits trilinearly to the crop size and threshold at 0.
        """
        dev = self.device
        if points is not None:
            if labels is None:
                raise PromptError("Points need labels (1 positive, 0 negative).")
            points = torch.as_tensor(points, dtype=torch.float32, device=dev)
            labels = torch.as_tensor(labels, dtype=torch.int64, device=dev)
            if points.dim() == 2:
                points, labels = points[None], labels[None]
            if points.shape[-1] != 3 or labels.shape != points.shape[:2]:
                raise PromptError(
                    f"points must be (B, N, 3) with labels (B, N); got {tuple(points.shape)} and "
                    f"{tuple(labels.shape)}."
                )
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=dev)
            if boxes.dim() == 2:
                boxes = boxes[None]
            if tuple(boxes.shape[1:]) != (2, 3):
                raise PromptError(f"boxes must be (B, 2, 3) corner pairs; got {tuple(boxes.shape)}.")
        if points is None and boxes is None:
            raise PromptError("Give at least one point or a box.")
        bs = points.shape[0] if points is not None else boxes.shape[0]
        m = self.config.mask_size
        if mask_input is None:
            mask_input = torch.zeros((bs, 1, m, m, m), device=dev)
        mask_input = torch.as_tensor(mask_input, dtype=torch.float32, device=dev)
        if tuple(mask_input.shape[1:]) != (1, m, m, m):
            raise PromptError(f"mask_input must be (B, 1, {m}, {m}, {m}); got {tuple(mask_input.shape)}.")
        sparse, dense = self.prompt_encoder(
            points=(points, labels) if points is not None else None, boxes=boxes, masks=mask_input
        )
        return self.mask_decoder(
            image_embeddings=image_embedding.to(dev),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def forward(
        self,
        crop: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` then ``predict`` (training convenience); shapes as in :meth:`predict`."""
        return self.predict(self.encode(crop), points, labels, boxes, mask_input, multimask)
