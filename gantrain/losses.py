"""Adversarial losses and regularizers as small functions (per-sample unless noted; callers reduce).

Sign convention for every objective: D outputs a score that is high for real samples; D minimizes its
loss and G minimizes its own. So "D maximizes log D(x) + log(1 - D(G(z)))" appears here as D
minimizing softplus(-real) + softplus(fake), since -log sigmoid(t) = softplus(-t).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


# ---- adversarial objectives ------------------------------------------------------------------------
def d_logistic_loss(real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))) (Goodfellow et al. 2014). SMOOTHING > 0 is
    one-sided label smoothing (Salimans et al. 2016): the real target is 1 - SMOOTHING, fakes stay 0."""
    return (1 - smoothing) * F.softplus(-real) + smoothing * F.softplus(real) + F.softplus(fake)


def g_minimax_loss(fake: torch.Tensor) -> torch.Tensor:
    """log(1 - sigmoid(D(G(z)))): the original (saturating) G loss. Its gradient sigmoid(D(G(z))) vanishes
    exactly when D confidently rejects the fakes, i.e. early in training."""
    return -F.softplus(fake)


def g_nonsaturating_loss(fake: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(G(z))): same fixed point as minimax, strong gradients when D wins."""
    return F.softplus(-fake)


def d_wasserstein_loss(real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Critic loss D(G(z)) - D(x) (Arjovsky et al. 2017); needs a Lipschitz constraint (clip or gp)."""
    return fake - real


def g_wasserstein_loss(fake: torch.Tensor) -> torch.Tensor:
    """-D(G(z)): the generator loss of WGAN, WGAN-GP and the hinge loss."""
    return -fake


def d_hinge_loss(real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """max(0, 1 - D(x)) + max(0, 1 + D(G(z))) (Lim & Ye 2017; Tran et al. 2017)."""
    return F.relu(1 - real) + F.relu(1 + fake)


def d_least_squares_loss(real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """1/2 (D(x) - b)^2 + 1/2 (D(G(z)) - a)^2 with a = 0, b = 1 - SMOOTHING (Mao et al. 2017)."""
    return 0.5 * (real - (1 - smoothing)).square() + 0.5 * fake.square()


def g_least_squares_loss(fake: torch.Tensor) -> torch.Tensor:
    """1/2 (D(G(z)) - c)^2 with c = 1."""
    return 0.5 * (fake - 1).square()


DLoss = Callable[..., torch.Tensor]
GLoss = Callable[[torch.Tensor], torch.Tensor]
OBJECTIVES: dict[str, tuple[DLoss, GLoss]] = {
    "minimax": (d_logistic_loss, g_minimax_loss),
    "nonsaturating": (d_logistic_loss, g_nonsaturating_loss),
    "wgan": (d_wasserstein_loss, g_wasserstein_loss),
    "wgan-gp": (d_wasserstein_loss, g_wasserstein_loss),
    "hinge": (d_hinge_loss, g_wasserstein_loss),
    "lsgan": (d_least_squares_loss, g_least_squares_loss),
}


def acgan_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Auxiliary classifier log-likelihood (Odena et al. 2017): both D and G minimize it, on real and
    fake samples for D, on fake samples for G."""
    return F.cross_entropy(class_logits.float(), labels, reduction="none")


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """||E f(x) - E f(G(z))||^2 over D's last hidden features (Salimans et al. 2016); a scalar."""
    return (real_features.float().mean(0) - fake_features.float().mean(0)).square().sum()


# ---- regularizers ----------------------------------------------------------------------------------
def grad_norm_sq(outputs: torch.Tensor, inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """||d sum(OUTPUTS) / d INPUTS||^2 per sample, differentiable (INPUTS must require grad).

    SCALE is the fp16 loss scale: the input gradient is taken of the scaled sum (so small gradients
    survive fp16) and divided back before squaring, as in PyTorch's AMP gradient-penalty recipe."""
    (grad,) = torch.autograd.grad(outputs.sum() * scale, inputs, create_graph=True)
    return (grad.float() / scale).square().flatten(1).sum(1)


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """||grad_x D(x)||^2 on real samples (Mescheder et al. 2018); weighted by gamma / 2."""
    return grad_norm_sq(real_logits, real_images, scale)


def r2_penalty(fake_logits: torch.Tensor, fake_images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """||grad_x D(x)||^2 on fake samples (Mescheder et al. 2018); weighted by gamma / 2."""
    return grad_norm_sq(fake_logits, fake_images, scale)


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """eps x + (1 - eps) G(z), one eps in [0, 1] per sample: where WGAN-GP enforces the gradient norm.
    In the reals' dtype: under autocast G's output is bf16/fp16 while the reals are fp32."""
    return torch.lerp(fake.to(real.dtype), real, eps.view(-1, *([1] * (real.dim() - 1))).to(real.dtype))


def gradient_penalty(logits: torch.Tensor, inputs: torch.Tensor, scale: float = 1.0, center: float = 1.0,
                     one_sided: bool = False) -> torch.Tensor:
    """(||grad_x D(x)|| - center)^2 at INPUTS (Gulrajani et al. 2017: interpolates, center 1). ONE_SIDED
    penalizes only norms above the center; center 0 gives the zero-centred variant."""
    norm = (grad_norm_sq(logits, inputs, scale) + 1e-12).sqrt()  # eps: sqrt has no gradient at 0
    gap = norm - center
    return (F.relu(gap) if one_sided else gap).square()


def path_lengths(images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """||J_w^T y|| per sample (Karras et al. 2020, appendix B): the gradient of sum(IMAGES * y) with respect
    to WS [N, num_ws, w_dim], squared and summed over w_dim, averaged over the layers, square-rooted. y is
    NOISE (normal / sqrt(H W), so ||y|| is about 1 per channel); SCALE as in grad_norm_sq (the loop passes
    none: scaled by an fp16 loss scale, this inner gradient overflows in the fp16 layers). Differentiable."""
    (grad,) = torch.autograd.grad((images.float() * noise.float()).sum() * scale, ws, create_graph=True)
    return (grad.float() / scale).square().sum(2).mean(1).sqrt()


def path_length_penalty(lengths: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(||J_w^T y|| - a)^2 per sample, a the running mean of the lengths (a constant here)."""
    return (lengths - mean.detach()).square()


def drift_penalty(real_logits: torch.Tensor) -> torch.Tensor:
    """D(x)^2 (Karras et al. 2018, eps_drift = 0.001): keeps a Wasserstein critic's output near 0."""
    return real_logits.float().square()


def orthogonal_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum over W of ||W W^T * (1 - I)||_F^2 (Brock et al. 2019), each W viewed as [out, fan_in]: pushes
    filters towards orthogonality without constraining their norms. BigGAN-PyTorch adds the gradient
    2 (W W^T * (1 - I)) W, i.e. half of this term's: its strength 1e-4 is a weight of 5e-5 here."""
    total = torch.zeros(())
    for w in weights:
        w = w.float().flatten(1)
        gram = w @ w.t()
        total = total.to(w.device) + (gram * (1 - torch.eye(w.shape[0], device=w.device))).square().sum()
    return total
