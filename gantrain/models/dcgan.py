"""DCGAN (Radford et al. 2016): strided (transposed) convs, batch norm, ReLU/tanh in G, LeakyReLU in D.

G is conditioned by concatenation (Mirza & Osindero 2014): a learned class embedding next to z. D is
conditioned by concatenation (one-hot class maps stacked onto the image channels), projection or an
auxiliary classifier (models.layers.DHead). D's last 4x4 conv is written as a linear layer on the
flattened 4x4 features (the same function), so the minibatch layers and the conditioning heads fit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gantrain.models.base import DataSpec, Discriminator, Generator
from gantrain.models.layers import DHead, DOutput, MinibatchStdDev


def _channels(resolution: int, out_resolution: int, base: int, cap: int) -> int:
    """Feature maps at RESOLUTION: BASE at the output, doubled per halving, capped at CAP."""
    return min(base * out_resolution // resolution, cap)


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


def _init(module: nn.Module) -> None:
    """The paper's initialisation: weights N(0, 0.02), batch-norm scale N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(Generator):
    def __init__(self, spec: DataSpec, z_dim: int = 100, channels: int = 64, max_channels: int = 512,
                 conditional: bool = False, norm: str = "batch"):
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = spec.num_classes if conditional else 0
        self.embed = nn.Embedding(self.num_classes, z_dim) if self.num_classes else None
        res = spec.resolution
        ch = [_channels(r, res, channels, max_channels) for r in (2 ** i for i in range(2, int(math.log2(res))))]
        in_dim = z_dim * (2 if self.embed is not None else 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, ch[0], 4, 1, 0, bias=norm != "batch"),
                                   _norm(norm, ch[0]), nn.ReLU(True)]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=norm != "batch"), _norm(norm, c_out),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[-1], spec.channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init(self)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c)], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(Discriminator):
    def __init__(self, spec: DataSpec, channels: int = 64, max_channels: int = 512, conditional: bool = False,
                 norm: str = "batch", conditioning: str = "concat", minibatch: str = "none", group: int = 4,
                 kernels: int = 32):
        super().__init__()
        self.num_classes = spec.num_classes if conditional else 0
        self.concat = conditioning == "concat"
        res = spec.resolution
        resolutions = [res // 2 ** i for i in range(1, int(math.log2(res)) - 1)]  # R/2 ... 4
        ch = [_channels(r, res, channels, max_channels) for r in resolutions]
        in_ch = spec.channels + (self.num_classes if self.concat else 0)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm != "batch"), _norm(norm, c_out),
                       nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers)
        self.mbstd = MinibatchStdDev(group) if minibatch == "stddev" else None
        flat = (ch[-1] + (1 if self.mbstd is not None else 0)) * 16
        self.head = DHead(flat, self.num_classes, conditioning, minibatch, kernels)
        _init(self)

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None,
                features: bool = False) -> torch.Tensor | DOutput:
        if self.num_classes and self.concat:
            maps = F.one_hot(c, self.num_classes).to(images.dtype)[:, :, None, None]
            images = torch.cat([images, maps.expand(-1, -1, *images.shape[2:])], dim=1)
        h = self.net(images)
        if self.mbstd is not None:
            h = self.mbstd(h)
        return self.head(h.flatten(1), c, features)
