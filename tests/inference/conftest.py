"""A fake network with fixed, predictable behaviour for the Session tests.

``FakeSam`` has the interface the Session uses (``config``, ``encode``, ``predict``,
``supports_boxes``). Its low-res logits are computed analytically at the low-res cell centres
``4 q + 1.5`` (crop voxel coordinates), so after the Session's trilinear upsampling the mask is known:

- ``mode="sphere"``: a ball of ``radius`` crop voxels (1.5 mm each) around the first positive point
  (and around every further positive point);
- ``mode="intensity"``: crop voxels whose (un-normalised) intensity exceeds 0.5 (the "embedding" is the
  crop average-pooled 4x4x4), so any object of intensity 1 on background 0 is found whole;
- ``mode="halfspace"``: crop voxels with index ``x[axis] <= p[axis]`` of the first point (exact after
  upsampling: the logits are linear);
- every negative point carves a ball of ``neg_radius`` voxels; a box adds its inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn


@dataclass(frozen=True)
class FakeConfig:
    image_size: int = 128
    normalization: str = "suv_clip"
    supports_boxes: bool = True


class FakeSam(nn.Module):
    def __init__(
        self,
        mode: str = "sphere",
        radius: float = 10.0,
        neg_radius: float = 6.0,
        boxes: bool = True,
        axis: int = 0,
    ):
        super().__init__()
        self.axis = axis
        self.config = FakeConfig(supports_boxes=boxes)
        self.mode = mode
        self.radius = radius
        self.neg_radius = neg_radius
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = {"encode": 0, "predict": 0}
        self.last_mask_input: np.ndarray | None = None

    @property
    def supports_boxes(self) -> bool:
        return self.config.supports_boxes

    def encode(self, crop: torch.Tensor) -> torch.Tensor:
        assert tuple(crop.shape) == (1, 1, 128, 128, 128)
        self.calls["encode"] += 1
        return torch.nn.functional.avg_pool3d(crop, 4)

    def predict(self, emb, points, labels, boxes=None, mask_input=None, multimask=False):
        self.calls["predict"] += 1
        assert mask_input is not None and tuple(mask_input.shape) == (1, 1, 32, 32, 32)
        self.last_mask_input = mask_input[0, 0].numpy().copy()
        self.last_labels = [] if labels is None else labels[0].tolist()
        q = np.arange(32) * 4 + 1.5
        c = np.stack(np.meshgrid(q, q, q, indexing="ij"), -1)
        pts = [] if points is None else points[0].numpy().astype(float)
        labs = [] if labels is None else labels[0].numpy().tolist()
        if self.mode == "halfspace":
            # linear along one axis: trilinear upsampling reproduces it exactly -> crop voxels x <= p
            base = (pts[0][self.axis] + 0.5) - c[..., self.axis]
        elif self.mode == "intensity":
            # the suv_clip normalisation divides by 5: intensity 1 -> 0.2
            base = (emb[0, 0].numpy().astype(float) * 5 - 0.5) * 10
        else:
            base = np.full((32, 32, 32), -50.0)
            for p, lab in zip(pts, labs):
                if lab == 1:
                    base = np.maximum(base, self.radius - np.linalg.norm(c - p, axis=-1))
        if boxes is not None:
            lo, hi = boxes[0].numpy().astype(float)
            inside = np.minimum(c - lo, hi - c).min(axis=-1) + 0.5
            base = np.maximum(base, inside)
        for p, lab in zip(pts, labs):
            if lab == 0:
                base = np.minimum(base, np.linalg.norm(c - p, axis=-1) - self.neg_radius)
        logits = torch.from_numpy(base.astype(np.float32))[None, None]
        return logits, torch.zeros(1, 1)


@pytest.fixture
def make_fake():
    """Factory: ``make_fake(mode="sphere", radius=10.0, neg_radius=6.0, boxes=True) -> FakeSam``."""
    return FakeSam
