"""Losses: Dice + cross-entropy (the published segmentation loss) and CPCL.

All functions take logits ``z`` and targets ``y`` of shape ``(B, 1, D, H, W)`` (float; y in {0, 1}).

DiceCE (MONAI ``DiceCELoss(sigmoid=True, squared_pred=True)`` as used by SAM-Med3D):
    p = sigmoid(z);  Dice_b = 1 - (2 Σ p y + 1e-5) / (Σ p² + Σ y² + 1e-5) per sample b,
    L = mean_b Dice_b + mean_v BCE(z, y).

CPCL, cross-prompt confidence learning. K >= 2 predictions ``z_1..z_K`` of the same object from K
different prompt sets (same image embedding):
    p_k = sigmoid(z_k),  μ = (1/K) Σ_k p_k,  u = (1/K) Σ_k (p_k - μ)²   (per voxel; u <= 0.25)
    confidence mask  m = [u <= τ]                         (low cross-prompt variance; τ = 0.01 default)
    rectified target t = stopgrad( [μ > 0.5] if m else - )  — the prompts' consensus, where they agree
    L_CPCL = (1/K) Σ_k  Σ_v m_v · BCE(z_k,v, t_v) / max(1, Σ_v m_v)
The term pulls every prompted prediction towards the confident consensus of all prompts, making the
model prompt-invariant where the prompts agree and leaving ambiguous (high-variance) voxels to the
supervised DiceCE term; it adds robustness to noisy reference contours (SegAnyPET's motivation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared-denominator soft Dice loss, mean over the batch; shapes ``(B, 1, D, H, W)``."""
    p = torch.sigmoid(logits.float()).flatten(1)
    y = target.float().flatten(1)
    inter = (p * y).sum(1)
    denom = (p * p).sum(1) + (y * y).sum(1)
    return (1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + binary cross-entropy (mean over voxels and batch); shapes ``(B, 1, D, H, W)``."""
    return dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits.float(), target.float())


def cpcl_loss(
    logits: list[torch.Tensor] | torch.Tensor, tau: float = 0.01
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-prompt confidence loss (formula in the module docstring).

    Args:
        logits: K tensors ``(B, 1, D, H, W)`` (or one ``(K, B, 1, D, H, W)`` tensor), K >= 2.
        tau: variance threshold of the confidence mask.

    Returns:
        (loss scalar, stats ``{"cpcl_confident": fraction of confident voxels, "cpcl_var": mean u}``).
    """
    z = torch.stack(list(logits)) if isinstance(logits, (list, tuple)) else logits
    if z.shape[0] < 2:
        raise ValueError("CPCL needs at least two prompted predictions")
    z = z.float()
    with torch.no_grad():
        p = torch.sigmoid(z)
        mu = p.mean(0)
        var = ((p - mu) ** 2).mean(0)
        mask = (var <= tau).float()
        target = (mu > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(z, target.expand_as(z), reduction="none")
    loss = (bce * mask).sum(dim=tuple(range(1, z.ndim))) / mask.sum().clamp_min(1.0)
    return loss.mean(), {"cpcl_confident": float(mask.mean()), "cpcl_var": float(var.mean())}
