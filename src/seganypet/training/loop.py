"""The interactive training step (simulated clicks, DiceCE over iterations, CPCL) and validation.

One training sample goes through ``num_clicks`` prompt iterations on one image embedding, as in the
published SAM-Med3D / SegAnyPET training:

- iteration 0: a positive click in the object (optionally with a box prompt), all-zero mask prompt.
  With CPCL, ``cpcl_prompts`` = K different first-click sets are decoded and the CPCL term is computed
  on their K upsampled logits (each also gets the supervised loss, divided by K); the first continues.
- iterations 1..n-1: a click in the current error region (positive in FN, negative in FP); points
  accumulate; the previous low-res logits are fed back as the mask prompt. The last iteration and one
  random middle iteration (published ``random_insert``) are *mask-only*: no sparse prompt, only the
  previous logits, teaching the model to refine its own mask.
- loss = Σ_iterations DiceCE(upsampled logits, target) + cpcl_weight · CPCL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seganypet.training.clicks import box_prompt, first_click, next_click
from seganypet.training.losses import cpcl_loss, dice_ce_loss


@dataclass
class InteractionConfig:
    num_clicks: int = 5  #: prompt iterations per sample
    click_mode: str = "random"  #: "random" or "center" (training); validation always uses "center"
    center_prob: float = 0.0  #: probability of the "center" variant per click when click_mode="random"
    mask_only: bool = True  #: last iteration and one random middle one use only the mask prompt
    cpcl_prompts: int = 3  #: K prompted first predictions for CPCL (< 2 turns CPCL off)
    cpcl_weight: float = 0.1
    cpcl_tau: float = 0.01
    box_prob: float = 0.0  #: probability that a batch gets a box prompt (needs box embeddings)
    loss_size: int | None = None  #: grid of the loss (None: the crop size, as published; 64 is 8x cheaper)


def upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    """Low-res logits ``(B, 1, m, m, m)`` -> ``(B, 1, size, size, size)`` (trilinear)."""
    return F.interpolate(low, size=(size, size, size), mode="trilinear", align_corners=False)


def decode(
    model: nn.Module,
    emb: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Prompt encoder + mask decoder (single-mask output) -> low-res logits ``(B, 1, m, m, m)``."""
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask)
    low, _ = model.mask_decoder(
        image_embeddings=emb,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return low


class InteractiveStep(nn.Module):
    """Wraps a :class:`Sam3D` so that one ``forward`` = one full interactive training step (DDP-able).

    ``forward(image (B,1,S,S,S), target (B,1,S,S,S))`` -> (loss scalar, stats dict of floats). The click
    randomness comes from ``self.rng`` (a numpy Generator the trainer checkpoints).
    """

    def __init__(self, model: nn.Module, cfg: InteractionConfig, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def _mode(self) -> str:
        if self.cfg.click_mode == "center":
            return "center"
        return "center" if self.cfg.center_prob > 0 and self.rng.random() < self.cfg.center_prob else "random"

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, model = self.cfg, self.model
        full = image.shape[-1]
        size = cfg.loss_size or full
        target_full = target
        if size != full:  # loss on a coarser grid: the target becomes its average over each cell
            target = F.adaptive_avg_pool3d(target, size)
        m = model.config.mask_size
        emb = model.image_encoder(image)
        zero = torch.zeros((image.shape[0], 1, m, m, m), device=image.device, dtype=emb.dtype)
        boxes = None
        if (
            cfg.box_prob > 0
            and getattr(model.config, "box_embeddings", False)
            and self.rng.random() < cfg.box_prob
        ):
            boxes = box_prompt(target_full, self.rng)
        coords, labels = first_click(target_full, self.rng, self._mode())
        stats: dict[str, float] = {}
        k = cfg.cpcl_prompts if cfg.cpcl_prompts >= 2 else 1
        ups = []
        low = zero
        for j in range(k):
            c, lab = (coords, labels) if j == 0 else first_click(target_full, self.rng, "random")
            low_j = decode(model, emb, (c, lab), boxes, zero)
            if j == 0:
                low = low_j  # the first prompt set's prediction continues the interaction
            ups.append(upsample(low_j, size))
        seg = sum(dice_ce_loss(u, target) for u in ups) / len(ups)
        total = seg
        stats["loss_it0"] = float(seg.detach())
        if k > 1:
            cp, cstats = cpcl_loss(ups, tau=cfg.cpcl_tau)
            total = total + cfg.cpcl_weight * cp
            stats["cpcl"] = float(cp.detach())
            stats.update(cstats)
        n = cfg.num_clicks
        mask_only = set()
        if cfg.mask_only and n >= 2:
            mask_only.add(n - 1)
            if n >= 4:
                mask_only.add(int(self.rng.integers(2, n)))
        for it in range(1, n):
            with torch.no_grad():
                pred = upsample(low.detach().float(), full) > 0
            if it in mask_only:
                low = decode(model, emb, None, None, low)
            else:
                c, lab = next_click(pred, target_full, self.rng, self._mode())
                coords, labels = torch.cat([coords, c], 1), torch.cat([labels, lab], 1)
                low = decode(model, emb, (coords, labels), boxes, low)
            up = upsample(low, size)
            it_loss = dice_ce_loss(up, target)
            total = total + it_loss
            stats[f"loss_it{it}"] = float(it_loss.detach())
        stats["seg_loss"] = float(total.detach()) - cfg.cpcl_weight * stats.get("cpcl", 0.0)
        return total, stats


def dice_np(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    s = pred.sum() + target.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(pred, target).sum() / s)


@torch.no_grad()
def validate(
    model: nn.Module,
    sampler: Any,
    items: list[tuple[str, dict[str, Any]]],
    clicks: int = 5,
    device: str = "cpu",
) -> dict[str, Any]:
    """Crop-level validation: Dice after 1..``clicks`` deterministic ``center`` clicks per object.

    Each object is cropped centred (no augmentation); click 1 is the object's deepest voxel, later
    clicks the deepest error voxel; points accumulate and the previous logits are fed back.

    Returns:
        ``{"dice": {kind: {n_clicks: mean Dice}}, "n": {kind: count}, "per_object": [...]}``.
    """
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(0)
    per_object = []
    try:
        for cid, obj in items:
            s = sampler.make(cid, obj, None)
            image = torch.from_numpy(s["image"][None]).to(device)
            target = torch.from_numpy(s["target"][None]).to(device)
            emb = model.image_encoder(image)
            coords, labels = first_click(target, rng, "center")
            m = model.config.mask_size
            low = torch.zeros((1, 1, m, m, m), device=device)
            dices = []
            up = torch.zeros_like(target)
            for it in range(clicks):
                if it > 0:
                    c, lab = next_click(up > 0, target, rng, "center")
                    coords, labels = torch.cat([coords, c], 1), torch.cat([labels, lab], 1)
                low = decode(model, emb, (coords, labels), None, low)
                up = upsample(low, image.shape[-1])
                dices.append(dice_np((up > 0).cpu().numpy(), target.bool().cpu().numpy()))
            per_object.append({"case_id": cid, "label": obj["label"], "kind": obj["kind"], "dice": dices})
    finally:
        model.train(was_training)
    out: dict[str, Any] = {"dice": {}, "n": {}, "per_object": per_object}
    for kind in sorted({o["kind"] for o in per_object}):
        rows = np.array([o["dice"] for o in per_object if o["kind"] == kind])
        out["dice"][kind] = {n + 1: float(rows[:, n].mean()) for n in range(clicks)}
        out["n"][kind] = int(len(rows))
    return out
