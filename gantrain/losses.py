"""Adversarial losses and regularizers as small functions of logits (per-sample; callers reduce).

Sign convention: D outputs a logit that is high for real images; D minimizes its loss, G minimizes its.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))) (Goodfellow et al. 2014)."""
    return F.softplus(-real_logits) + F.softplus(fake_logits)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(G(z))): the non-saturating G loss, strong gradients when D wins."""
    return F.softplus(-fake_logits)


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """||grad_x D(x)||^2 on real images (Mescheder et al. 2018); REAL_IMAGES must require grad.

    SCALE is the fp16 loss scale: the input gradient is taken of the scaled sum (so small gradients
    survive fp16) and divided back before squaring, as in PyTorch's AMP gradient-penalty recipe."""
    (grad,) = torch.autograd.grad(real_logits.sum() * scale, real_images, create_graph=True)
    return (grad.float() / scale).square().flatten(1).sum(1)
