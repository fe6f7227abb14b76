"""ProGAN (Karras et al. 2018): networks that grow from 4x4 to the data's resolution.

Every conv and linear layer uses the equalized learning rate; G normalizes each pixel's features
(pixel norm) after every conv; D ends with a minibatch standard deviation layer (`model.minibatch:
stddev`, on in the presets). Each resolution has its own toRGB (G) and fromRGB (D), 1x1 convs.
G upsamples by nearest neighbour, D downsamples by 2x2 average pooling; LeakyReLU 0.2 throughout.

The stage is set from outside with `set_stage(resolution, alpha)`. While a new block fades in
(alpha < 1), G's output is lerp(upsample(toRGB_old(h)), toRGB_new(block(h)), alpha) and D's features
are lerp(fromRGB_old(downsample(x)), block(fromRGB_new(x)), alpha): at alpha 0 both networks compute
exactly what the previous stage computed, at alpha 1 the old path is not evaluated at all.
`active_modules()` names the submodules the current stage uses, so an engine can wrap exactly those.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gantrain.models.base import DataSpec, Discriminator, Generator
from gantrain.models.layers import DHead, DOutput, EqualizedConv2d, EqualizedLinear, MinibatchStdDev, pixel_norm


def _channels(resolution: int, out_resolution: int, base: int, cap: int) -> int:
    return min(base * out_resolution // resolution, cap)


class _Progressive:
    """Stage bookkeeping shared by G and D."""

    resolutions: list[int]
    resolution: int
    alpha: float

    def set_stage(self, resolution: int, alpha: float = 1.0) -> None:
        if resolution not in self.resolutions:
            raise ValueError(f"resolution {resolution} is not one of {self.resolutions}")
        if resolution == self.resolutions[0] and alpha < 1:
            raise ValueError(f"nothing to fade from at the first resolution {resolution}")
        self.resolution, self.alpha = resolution, float(alpha)

    @property
    def level(self) -> int:
        return self.resolutions.index(self.resolution)

    @property
    def fading(self) -> bool:
        return self.alpha < 1

    def _active_path(self, rgb: str) -> dict[str, nn.Module]:
        """The blocks up to the current resolution and its RGB layer (the previous one too while fading)."""
        k, layers = self.level, getattr(self, rgb)
        active = {f"blocks.{i}": self.blocks[i] for i in range(k + 1)}
        active[f"{rgb}.{k}"] = layers[k]
        if self.fading:
            active[f"{rgb}.{k - 1}"] = layers[k - 1]
        return active


class GBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(c_in, c_out, 3)
        self.conv2 = EqualizedConv2d(c_out, c_out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = pixel_norm(F.leaky_relu(self.conv1(x), 0.2))
        return pixel_norm(F.leaky_relu(self.conv2(x), 0.2))


class GFirst(nn.Module):
    def __init__(self, z_dim: int, c_out: int):
        super().__init__()
        self.dense = EqualizedLinear(z_dim, c_out * 16, gain=math.sqrt(2) / 4)  # as the official code
        self.conv = EqualizedConv2d(c_out, c_out, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(pixel_norm(z)).view(z.shape[0], -1, 4, 4)
        x = pixel_norm(F.leaky_relu(x, 0.2))
        return pixel_norm(F.leaky_relu(self.conv(x), 0.2))


class ProGANGenerator(_Progressive, Generator):
    def __init__(self, spec: DataSpec, z_dim: int = 512, channels: int = 16, max_channels: int = 512,
                 conditional: bool = False):
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = spec.num_classes if conditional else 0
        self.embed = nn.Embedding(self.num_classes, z_dim) if self.num_classes else None
        self.resolutions = [2 ** i for i in range(2, int(math.log2(spec.resolution)) + 1)]
        ch = [_channels(r, spec.resolution, channels, max_channels) for r in self.resolutions]
        in_dim = z_dim * (2 if self.embed is not None else 1)
        self.blocks = nn.ModuleList([GFirst(in_dim, ch[0])] + [GBlock(a, b) for a, b in zip(ch[:-1], ch[1:])])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c, spec.channels, 1, gain=1.0) for c in ch])
        self.set_stage(spec.resolution)

    def active_modules(self) -> dict[str, nn.Module]:
        active = self._active_path("to_rgb")
        if self.embed is not None:
            active["embed"] = self.embed
        return active

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c)], dim=1)
        k = self.level
        h = self.blocks[0](z)
        for block in self.blocks[1:k]:
            h = block(h)
        if k == 0:
            return self.to_rgb[0](h)
        new = self.to_rgb[k](self.blocks[k](h))
        if not self.fading:
            return new
        old = F.interpolate(self.to_rgb[k - 1](h), scale_factor=2, mode="nearest")
        return torch.lerp(old, new, self.alpha)


class DBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = EqualizedConv2d(c_in, c_in, 3)
        self.conv2 = EqualizedConv2d(c_in, c_out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), 0.2)
        return F.avg_pool2d(F.leaky_relu(self.conv2(x), 0.2), 2)


class DLast(nn.Module):
    """4x4: minibatch stddev (optional), conv, dense; the head makes the score."""

    def __init__(self, c_in: int, minibatch: str, group: int):
        super().__init__()
        self.mbstd = MinibatchStdDev(group) if minibatch == "stddev" else None
        self.conv = EqualizedConv2d(c_in + (1 if self.mbstd is not None else 0), c_in, 3)
        self.dense = EqualizedLinear(c_in * 16, c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = F.leaky_relu(self.conv(x), 0.2)
        return F.leaky_relu(self.dense(x.flatten(1)), 0.2)


class FromRGB(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = EqualizedConv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), 0.2)


class ProGANDiscriminator(_Progressive, Discriminator):
    def __init__(self, spec: DataSpec, channels: int = 16, max_channels: int = 512, conditional: bool = False,
                 conditioning: str = "concat", minibatch: str = "stddev", group: int = 4, kernels: int = 32):
        super().__init__()
        self.num_classes = spec.num_classes if conditional else 0
        self.concat = conditioning == "concat"
        self.resolutions = [2 ** i for i in range(2, int(math.log2(spec.resolution)) + 1)]
        ch = [_channels(r, spec.resolution, channels, max_channels) for r in self.resolutions]
        in_ch = spec.channels + (self.num_classes if self.concat else 0)
        self.from_rgb = nn.ModuleList([FromRGB(in_ch, c) for c in ch])
        # blocks[0] is the 4x4 end; blocks[i] takes resolution i down to resolution i - 1.
        self.blocks = nn.ModuleList([DLast(ch[0], minibatch, group)] +
                                    [DBlock(ch[i], ch[i - 1]) for i in range(1, len(ch))])
        self.head = DHead(ch[0], self.num_classes, conditioning, minibatch, kernels,
                          linear=lambda a, b: EqualizedLinear(a, b, gain=1.0))
        self.set_stage(spec.resolution)

    def active_modules(self) -> dict[str, nn.Module]:
        active = self._active_path("from_rgb")
        active["head"] = self.head
        return active

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None,
                features: bool = False) -> torch.Tensor | DOutput:
        if self.num_classes and self.concat:
            maps = F.one_hot(c, self.num_classes).to(images.dtype)[:, :, None, None]
            images = torch.cat([images, maps.expand(-1, -1, *images.shape[2:])], dim=1)
        k = self.level
        h = self.from_rgb[k](images)
        if k > 0:
            h = self.blocks[k](h)
            if self.fading:
                h = torch.lerp(self.from_rgb[k - 1](F.avg_pool2d(images, 2)), h, self.alpha)
            for i in range(k - 1, 0, -1):
                h = self.blocks[i](h)
        return self.head(self.blocks[0](h), c, features)
