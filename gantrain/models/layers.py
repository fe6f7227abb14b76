"""Blocks shared by the model families: minibatch layers, the discriminator head with its conditioning
methods, and spectral normalization as a switch over a finished network."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class DOutput(NamedTuple):
    """What a discriminator returns when asked for everything (`D(x, c, features=True)`)."""

    logits: torch.Tensor  # [N] adversarial score
    features: torch.Tensor  # [N, F] last hidden features (feature matching, projection)
    class_logits: torch.Tensor | None  # [N, K] auxiliary classifier (AC-GAN), else None


class MinibatchStdDev(nn.Module):
    """Appends the average standard deviation across a group of samples as extra channels (Karras et
    al. 2018): a collapsed batch (all samples alike) shows up as a value near 0. Works on [N, C] and
    [N, C, H, W]; groups of GROUP samples (fewer if the batch is smaller), which must divide the batch.
    CHANNELS > 1 (StyleGAN2's mbstd_num_channels) splits the features into that many slices, one
    statistic each."""

    def __init__(self, group: int = 4, channels: int = 1):
        super().__init__()
        self.group, self.channels = group, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, f = x.shape[0], self.channels
        g = min(self.group, n)
        if n % g:
            raise ValueError(f"minibatch stddev: group size {g} does not divide the batch of {n}")
        # Groups of consecutive samples (ProGAN's and StyleGAN2's code stride them instead): then a rank's
        # slice of a global batch holds whole groups, and data-parallel training computes what one process would.
        y = x.reshape(n // g, g, f, x.shape[1] // f, *x.shape[2:]).float()
        std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt()  # [n // g, F, C // F, ...]
        stat = std.flatten(2).mean(2).to(x.dtype)  # [n // g, F]: one number per group and slice
        stat = stat.repeat_interleave(g, dim=0).view(n, f, *([1] * (x.dim() - 2))).expand(n, f, *x.shape[2:])
        return torch.cat([x, stat], dim=1)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, section 3.2: features f [N, A] are projected by T to M [N, B, C]; for each
    kernel b, o(x_i)_b = sum over j != i of exp(-||M_i,b - M_j,b||_1). The B closeness values are appended
    to f, so D can tell a batch of near-copies from a diverse one."""

    def __init__(self, in_features: int, kernels: int = 32, kernel_dim: int = 16):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * 0.1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        m = (f @ self.T).view(-1, self.kernels, self.kernel_dim)  # [N, B, C]
        l1 = (m[:, None] - m[None, :]).abs().sum(-1)  # [N, N, B]
        closeness = torch.exp(-l1).sum(1) - 1  # minus exp(0) for j == i
        return torch.cat([f, closeness], dim=1)


class DHead(nn.Module):
    """Features -> adversarial logit, with the label used by projection (Miyato & Koyama 2018:
    logit += <embed(y), phi(x)>) or by an auxiliary classifier (Odena et al. 2017). Concatenation
    conditioning happens at D's input, in the model itself."""

    def __init__(self, in_features: int, num_classes: int = 0, conditioning: str = "concat",
                 minibatch: str = "none", kernels: int = 32, linear: Callable[[int, int], nn.Module] = nn.Linear):
        super().__init__()
        self.mbd = MinibatchDiscrimination(in_features, kernels) if minibatch == "discrimination" else None
        features = in_features + (kernels if self.mbd is not None else 0)
        self.linear = linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes and conditioning == "projection" else None
        self.aux = linear(features, num_classes) if num_classes and conditioning == "acgan" else None

    def forward(self, f: torch.Tensor, c: torch.Tensor | None, features: bool) -> torch.Tensor | DOutput:
        if self.mbd is not None:
            f = self.mbd(f)
        logits = self.linear(f).flatten()
        if self.embed is not None:
            logits = logits + (self.embed(c) * f).sum(1)
        if not features:
            return logits
        return DOutput(logits, f, self.aux(f) if self.aux is not None else None)


class EqualizedLinear(nn.Module):
    """Equalized learning rate (Karras et al. 2018, section 4.1): weights drawn from N(0, 1) and scaled by
    gain / sqrt(fan_in) at run time, so Adam's per-parameter step moves every layer at the same pace."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """A conv with the equalized learning rate; 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit average square (Karras et al. 2018, section 4.2)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def spectral_norm_all(module: nn.Module, eps: float = 1e-12) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) on every conv, linear and embedding weight of MODULE,
    via torch's parametrization (one power iteration per training forward; u, v are buffers; EPS guards
    the normalizations). A layer whose model marks it `no_spectral_norm` keeps its plain weight."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding))
              and not getattr(m, "no_spectral_norm", False)]
    for m in layers:
        # ConvTranspose2d keeps output channels in dim 1 of its weight.
        nn.utils.parametrizations.spectral_norm(m, eps=eps, dim=1 if isinstance(m, nn.ConvTranspose2d) else 0)
    return module


INITS = ("default", "ortho", "n02", "xavier")


def initialize(module: nn.Module, scheme: str) -> nn.Module:
    """model.init for any family: every conv, linear and embedding weight of MODULE re-drawn by SCHEME --
    ortho (orthogonal, BigGAN's), n02 (normal, std 0.02, DCGAN's), xavier (Glorot uniform) -- biases
    zeroed; default keeps the family's own initialization (equalized-lr families need theirs)."""
    if scheme == "default":
        return module
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            {"ortho": nn.init.orthogonal_, "xavier": nn.init.xavier_uniform_,
             "n02": lambda w: nn.init.normal_(w, 0.0, 0.02)}[scheme](m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module
