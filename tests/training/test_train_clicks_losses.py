"""Click simulation lands where it must; DiceCE and CPCL values on hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seganypet.training.clicks import box_prompt, first_click, next_click
from seganypet.training.losses import cpcl_loss, dice_ce_loss, dice_loss


def _ball(shape, centre, r):
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return ((ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (kk - centre[2]) ** 2) <= r * r


@pytest.mark.parametrize("mode", ["random", "center"])
def test_first_click_in_object(mode: str) -> None:
    rng = np.random.default_rng(0)
    t = torch.from_numpy(np.stack([_ball((24, 24, 24), (8, 12, 15), 4), _ball((24, 24, 24), (16, 6, 6), 2)]))
    t = t[:, None].float()
    for _ in range(10):
        coords, labels = first_click(t, rng, mode)
        assert coords.shape == (2, 1, 3) and labels.tolist() == [[1], [1]]
        for b in range(2):
            assert t[b, 0][tuple(coords[b, 0].long().tolist())] == 1
    if mode == "center":  # deepest voxel of a ball is its centre
        assert coords[0, 0].tolist() == [8, 12, 15]


@pytest.mark.parametrize("mode", ["random", "center"])
def test_next_click_in_error_region(mode: str) -> None:
    rng = np.random.default_rng(1)
    shape = (24, 24, 24)
    truth = _ball(shape, (12, 12, 12), 6)
    under = _ball(shape, (12, 12, 12), 3)  # prediction too small: only false negatives
    over = truth | _ball(shape, (4, 4, 4), 3)  # too big: only false positives
    t = torch.from_numpy(np.stack([truth, truth]))[:, None]
    p = torch.from_numpy(np.stack([under, over]))[:, None]
    for _ in range(20):
        coords, labels = next_click(p, t, rng, mode)
        ijk0 = tuple(coords[0, 0].long().tolist())
        ijk1 = tuple(coords[1, 0].long().tolist())
        assert truth[ijk0] and not under[ijk0] and labels[0, 0] == 1  # positive click in FN
        assert over[ijk1] and not truth[ijk1] and labels[1, 0] == 0  # negative click in FP
    # mixed errors, center mode: the deeper error region wins
    mixed = _ball(shape, (12, 12, 12), 2) | _ball(shape, (3, 3, 20), 1)
    coords, labels = next_click(torch.from_numpy(mixed)[None, None], t[:1], rng, "center")
    assert labels.item() == 1


def test_box_prompt() -> None:
    t = torch.zeros(1, 1, 20, 20, 20)
    t[0, 0, 3:8, 4:10, 5:15] = 1
    assert box_prompt(t, None).tolist() == [[[3, 4, 5], [7, 9, 14]]]
    jittered = box_prompt(t, np.random.default_rng(0), jitter=0.2)
    assert jittered.shape == (1, 2, 3) and torch.all(jittered[0, 0] <= jittered[0, 1])


def test_dice_ce_values() -> None:
    y = torch.zeros(1, 1, 2, 2, 2)
    y[0, 0, 0] = 1  # 4 of 8 voxels
    big = torch.where(y > 0, 50.0, -50.0)
    assert dice_ce_loss(big, y).item() == pytest.approx(0.0, abs=1e-5)
    zero = torch.zeros_like(y)  # p = 0.5 everywhere: Dice = 1 - 2*2/(2+4), BCE = ln 2
    assert dice_loss(zero, y).item() == pytest.approx(1 - 4 / 6, abs=1e-5)
    assert dice_ce_loss(zero, y).item() == pytest.approx(1 - 4 / 6 + math.log(2), abs=1e-5)


def test_cpcl_hand_made() -> None:
    # 2 prompts, 4 voxels. logits chosen so that p = sigmoid(z) is exact-ish
    z1 = torch.tensor([4.0, -4.0, 0.0, 3.0]).reshape(1, 1, 1, 1, 4)
    z2 = torch.tensor([4.0, -4.0, 3.0, -3.0]).reshape(1, 1, 1, 1, 4)
    p1, p2 = torch.sigmoid(z1), torch.sigmoid(z2)
    var = ((p1 - (p1 + p2) / 2) ** 2 + (p2 - (p1 + p2) / 2) ** 2) / 2
    # voxels 0, 1 agree (var 0), voxel 2 differs by 0.45 (var 0.05), voxel 3 disagrees (var ~0.2)
    assert var.flatten()[:2].tolist() == [0, 0] and var.flatten()[2] > 0.01 and var.flatten()[3] > 0.15
    loss, stats = cpcl_loss([z1, z2], tau=0.01)
    # confident voxels 0 (target 1) and 1 (target 0): BCE = softplus(-4) each, for both prompts
    expected = F.softplus(torch.tensor(-4.0)).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["cpcl_confident"] == pytest.approx(0.5)
    # a looser threshold includes voxel 2 (target: mean p > 0.5 -> 1)
    loss2, stats2 = cpcl_loss([z1, z2], tau=0.1)
    bce2 = (F.softplus(torch.tensor(-0.0)) + F.softplus(torch.tensor(-3.0))).item() / 2
    assert loss2.item() == pytest.approx((2 * expected + bce2) / 3, rel=1e-5)
    # gradient flows to the logits, not through the target
    z = torch.stack([z1, z2]).requires_grad_()
    cpcl_loss(z, tau=0.01)[0].backward()
    assert z.grad is not None and z.grad[:, ..., 3].abs().sum() == 0
    with pytest.raises(ValueError):
        cpcl_loss([z1])
