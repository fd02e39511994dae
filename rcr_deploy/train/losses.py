"""The training loss of the paper (§3.3, after PortraitNet): L = Lm + α·Lc + β·Le.

* Lm: 2-class cross-entropy on the mask logits, label 255 ignored.
* Lc: consistency, T²·KL(teacher || student) at temperature T, the teacher detached,
  averaged over all elements.
* Le: focal loss (γ = 2, no α) on the 2-channel edge logits against the contour target,
  averaged over pixels.
* Ld (`train --distill`, not the paper's): the same KL towards a frozen model's mask logits on the
  deformation-only view, each sample weighted by its dataset's `--distill-weights`, so that
  fine-tuning on new data keeps what the frozen model did on the old.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

IGNORE = 255


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lm: cross-entropy, pixels labelled 255 ignored."""
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) || softmax(student/T)) per element; no gradient reaches the teacher."""
    log_p = F.log_softmax(student / temperature, dim=1)
    q = F.softmax(teacher.detach() / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="none") * temperature**2


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Lc: T² · mean over elements of KL(softmax(teacher/T) || softmax(student/T)); no gradient
    reaches the teacher."""
    return _kl(student, teacher, temperature).mean()


def distill_loss(student: torch.Tensor, frozen: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Ld: the consistency KL towards a frozen model, averaged per sample, times each sample's
    `weight` (N,), averaged over the batch: a weight of 0 leaves a sample to its labels alone."""
    return (_kl(student, frozen, temperature).flatten(1).mean(1) * weight).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Le: mean over pixels of -(1 - p_t)^γ · log p_t."""
    log_pt = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


@dataclasses.dataclass(frozen=True)
class LossWeights:
    alpha: float = 1.0
    beta: float = 0.3
    temperature: float = 1.0


def total_loss(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    edge: torch.Tensor,
    w: LossWeights = LossWeights(),
    frozen: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms and their weighted sum for one batch of (mask logits, edge logits) pairs.

    As in PortraitNet, Lm and Le supervise both passes (averaged), and Lc pulls the
    texture-augmented student towards the deformation-only teacher. `frozen`: (a frozen model's
    mask logits on the teacher's input, per-sample weights) adds Ld on the teacher pass.
    """
    (s_mask, s_edge), (t_mask, t_edge) = student, teacher
    lm = (mask_loss(s_mask, mask) + mask_loss(t_mask, mask)) / 2
    lc = consistency_loss(s_mask, t_mask, w.temperature)
    le = (focal_loss(s_edge, edge) + focal_loss(t_edge, edge)) / 2
    terms = {"loss": lm + w.alpha * lc + w.beta * le, "lm": lm, "lc": lc, "le": le}
    if frozen is not None:
        terms["ld"] = distill_loss(t_mask, frozen[0], frozen[1], w.temperature)
        terms["loss"] = terms["loss"] + terms["ld"]
    return terms
