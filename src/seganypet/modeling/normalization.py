"""Intensity normalisation of a crop before the encoder (``ModelConfig.normalization``).

- ``"zscore_nonzero"`` (published): ``(x − mean) / std`` with mean and (unbiased) std over the voxels
  > 0, applied to every voxel (torchio ``ZNormalization(masking_method=lambda x: x > 0)``). With fewer
  than two positive voxels or zero std the crop is only shifted (std taken as 1).
- ``"suv_clip"``: SUV clipped to [0, 20] and divided by 5 (fixed scale, keeps absolute uptake).
"""

from __future__ import annotations

import numpy as np
import torch

from seganypet.errors import ModelError

SUV_CLIP_MAX = 20.0
SUV_CLIP_SCALE = 5.0


def normalize_crop(crop: torch.Tensor | np.ndarray, method: str = "zscore_nonzero") -> torch.Tensor:
    """Normalised float32 tensor of the same shape as ``crop`` (any shape; SUV or raw intensities)."""
    x = torch.as_tensor(np.asarray(crop) if not isinstance(crop, torch.Tensor) else crop).to(torch.float32)
    if method == "zscore_nonzero":
        values = x[x > 0]
        if values.numel() == 0:
            return x.clone()
        mean = values.mean()
        std = values.std() if values.numel() > 1 else torch.tensor(0.0)
        if not torch.isfinite(std) or std <= 0:
            std = torch.tensor(1.0)
        return (x - mean) / std
    if method == "suv_clip":
        return x.clamp(0.0, SUV_CLIP_MAX) / SUV_CLIP_SCALE
    raise ModelError(f"Unknown normalization {method!r} (use 'zscore_nonzero' or 'suv_clip').")
