"""Models for the toy problems (gantrain.data.toy), behind the same contract as the image models.

Samples are vectors [N, spec.channels] (spec.resolution is 1). The Dirac-GAN pair is Mescheder et al.
2018, section 2: G's distribution is a point mass at theta, D(x) = psi * x; the equilibrium is
theta = psi = 0 when the data is a point mass at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gantrain.models.base import DataSpec, Discriminator, Generator
from gantrain.models.layers import DHead, DOutput, MinibatchStdDev


class MLPGenerator(Generator):
    def __init__(self, spec: DataSpec, z_dim: int = 2, hidden: int = 128, depth: int = 3, conditional: bool = False):
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = spec.num_classes if conditional else 0
        self.embed = nn.Embedding(self.num_classes, z_dim) if self.num_classes else None
        layers: list[nn.Module] = []
        width = z_dim * (2 if self.embed is not None else 1)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, spec.channels))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c)], dim=1)
        return self.net(z)


class MLPDiscriminator(Discriminator):
    def __init__(self, spec: DataSpec, hidden: int = 128, depth: int = 3, conditional: bool = False,
                 conditioning: str = "concat", minibatch: str = "none", group: int = 4, kernels: int = 32):
        super().__init__()
        self.num_classes = spec.num_classes if conditional else 0
        self.concat = conditioning == "concat"
        layers: list[nn.Module] = []
        width = spec.channels + (self.num_classes if self.concat else 0)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.mbstd = MinibatchStdDev(group) if minibatch == "stddev" else None
        self.head = DHead(width + (1 if self.mbstd is not None else 0), self.num_classes, conditioning, minibatch,
                          kernels)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None,
                features: bool = False) -> torch.Tensor | DOutput:
        if self.num_classes and self.concat:
            x = torch.cat([x, F.one_hot(c, self.num_classes).to(x.dtype)], dim=1)
        h = self.net(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        return self.head(h, c, features)


class DiracGenerator(Generator):
    """A point mass at theta, whatever the latent."""

    def __init__(self, spec: DataSpec, z_dim: int = 1, theta: float = 1.0):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, 0
        self.theta = nn.Parameter(torch.full((spec.channels,), theta))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.theta.expand(z.shape[0], -1)


class DiracDiscriminator(Discriminator):
    """D(x) = psi . x: linear, no bias."""

    def __init__(self, spec: DataSpec, psi: float = 1.0):
        super().__init__()
        self.num_classes = 0
        self.psi = nn.Parameter(torch.full((spec.channels,), psi))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None,
                features: bool = False) -> torch.Tensor | DOutput:
        logits = x @ self.psi
        return DOutput(logits, x, None) if features else logits
