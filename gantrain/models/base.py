"""The small contract every model family implements; the training loop relies on nothing else.

A generator maps latents z [N, z_dim] (and class labels c [N] when conditional) to images in [-1, 1];
a discriminator maps images (and labels) to one logit per image, or with `features=True` to a
`DOutput` (logits, last hidden features, auxiliary class logits) for losses that need more than the
score. Models never see ranks, precision, devices or loggers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data: taken from the shard manifest."""

    resolution: int
    channels: int
    num_classes: int


class Generator(nn.Module):
    """Style-based generators also expose `mapping(z, c) -> w`, `synthesis(w) -> images` and a `w_avg`
    buffer; the sampling tools then interpolate and truncate in w instead of z (gantrain.visual), and
    `forward(z, c, return_ws=True)` returns (images, ws) for path-length regularization."""

    z_dim: int
    num_classes: int  # 0: unconditional
    # True for a generator that draws random numbers in its forward (noise inputs, style mixing): the loop
    # then reseeds torch's default generators per rank and phase from its checkpointed latent generator.
    stochastic: bool = False
    # The truncation trick in z of a non-style-based G: shrink (z * psi) or resample (BigGAN: entries
    # beyond the threshold psi redrawn, gantrain.models.base.resample_truncation).
    truncation: str = "shrink"

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class Discriminator(nn.Module):
    num_classes: int

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None, features: bool = False):
        raise NotImplementedError


def resample_truncation(z: torch.Tensor, threshold: float, seed: int = 0) -> torch.Tensor:
    """BigGAN's truncation trick: every entry of Z with |z| > THRESHOLD redrawn from N(0, 1) until it lies
    within (so Z becomes a truncated normal); entries already within are kept. Deterministic for SEED.
    A threshold of 0 gives the limit, z = 0 (what the sampling tools' psi 0 means for every family)."""
    if threshold <= 0:
        return torch.zeros_like(z)
    gen = torch.Generator(device=z.device).manual_seed(seed)
    z = z.clone()
    outside = z.abs() > threshold
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=gen, device=z.device, dtype=z.dtype)
        outside = z.abs() > threshold
    return z


def truncate_ws(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """The truncation trick of a style-based G: WS pulled towards W_AVG by PSI; with CUTOFF only the first
    CUTOFF layers' ws (the coarse styles), the later layers keep theirs. WS is [N, num_ws, w_dim], or
    [N, w_dim] (one w for every layer: then CUTOFF needs the layer count, so pass ws broadcast)."""
    if psi == 1:
        return ws
    if cutoff is None:
        return w_avg.lerp(ws, psi)
    return torch.cat([w_avg.lerp(ws[:, :cutoff], psi), ws[:, cutoff:]], dim=1)
