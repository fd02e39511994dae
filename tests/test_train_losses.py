"""The loss terms against values computed by hand from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from rcr_deploy.train.losses import LossWeights, consistency_loss, focal_loss, mask_loss, total_loss


def _pixel(*logits: float) -> torch.Tensor:
    return torch.tensor(logits, dtype=torch.float64).view(1, len(logits), 1, 1)


def test_mask_loss_ignores_255():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)  # 1x2x1x2
    target = torch.tensor([[[0, 255]]])
    # Only pixel 0 counts: -log softmax(2, 0)[0] = log(1 + e^-2).
    assert mask_loss(logits, target).item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_consistency_hand_computed_and_teacher_detached():
    student = _pixel(0.0, 1.0).requires_grad_()
    teacher = _pixel(1.0, 0.0).requires_grad_()
    p_s = [1 / (1 + math.e), math.e / (1 + math.e)]
    q = [math.e / (1 + math.e), 1 / (1 + math.e)]
    kl_elements = [q[i] * (math.log(q[i]) - math.log(p_s[i])) for i in range(2)]
    expected = sum(kl_elements) / 2  # mean over the 2 elements (classes) of the one pixel
    loss = consistency_loss(student, teacher, temperature=1.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    # T^2 scaling: at T = 2 the softened distributions are compared, times 4.
    ps2 = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]
    q2 = ps2[::-1]
    expected2 = 4 * sum(q2[i] * (math.log(q2[i]) - math.log(ps2[i])) for i in range(2)) / 2
    assert consistency_loss(student, teacher, 2.0).item() == pytest.approx(expected2)


def test_focal_loss_hand_computed():
    logits = _pixel(0.0, math.log(3.0))  # p(class 1) = 3/4
    p = 0.75
    assert focal_loss(logits, torch.tensor([[[1]]])).item() == pytest.approx(-((1 - p) ** 2) * math.log(p))
    assert focal_loss(logits, torch.tensor([[[0]]])).item() == pytest.approx(-(p**2) * math.log(1 - p))
    # gamma = 0 is plain cross-entropy.
    assert focal_loss(logits, torch.tensor([[[1]]]), gamma=0.0).item() == pytest.approx(-math.log(p))


def test_total_is_lm_plus_alpha_lc_plus_beta_le():
    torch.manual_seed(0)
    s_mask, t_mask, s_edge, t_edge = (torch.randn(2, 2, 4, 4, dtype=torch.float64) for _ in range(4))
    mask, edge = torch.randint(0, 2, (2, 4, 4)), torch.randint(0, 2, (2, 4, 4))
    terms = total_loss((s_mask, s_edge), (t_mask, t_edge), mask, edge, LossWeights(alpha=1.0, beta=0.3))
    lm = (mask_loss(s_mask, mask) + mask_loss(t_mask, mask)) / 2
    le = (focal_loss(s_edge, edge) + focal_loss(t_edge, edge)) / 2
    lc = consistency_loss(s_mask, t_mask)
    assert terms["lm"].item() == pytest.approx(lm.item())
    assert terms["loss"].item() == pytest.approx((lm + lc + 0.3 * le).item())
    same = total_loss((s_mask, s_edge), (s_mask, s_edge), mask, edge)
    assert same["lc"].item() == pytest.approx(0.0, abs=1e-12)
