"""BigGAN (Brock et al. 2019), as the reference BigGAN-PyTorch (ajbrock) builds its networks.

G: the latent is split into one chunk per block plus one for the input layer (hierarchical latents);
a shared class embedding joins each block's chunk to drive its class-conditional batch norms (gain
1 + W_g [e, z_k], bias W_b [e, z_k], from linear layers); a linear layer makes the 4x4 map; residual
up-blocks (cBN, ReLU, nearest x2, conv3x3, cBN, ReLU, conv3x3; a 1x1 conv on the upsampled skip);
self-attention (SAGAN, gamma starting at 0) at `model.attention` resolutions; BN, ReLU, conv3x3, tanh.
D: residual down-blocks (the first without its pre-activation; a 1x1 skip conv where the channels
change or the block downsamples), self-attention, ReLU, global sum pooling, a linear score plus the
projection of a class embedding onto the pooled features.

Widths are the reference's G_arch / D_arch multipliers of `model.channels` (its `ch`) for 32 to 512
pixels. Spectral normalization (`model.spectral_norm: both` in the presets) and the orthogonal init
(`model.init: ortho`) are the switches every family shares (gantrain.models.build); the shared
embedding stays unnormalized, as in the reference. With `ch` 96 at 128x128 and 1000 classes the
networks have the reference's 70,433,988 and 87,982,370 parameters (tests/test_biggan.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gantrain.models.base import DataSpec, Discriminator, Generator
from gantrain.models.layers import DOutput

# resolution -> (G in, G out, D in (after the image), D out) channel multipliers; D downsamples in every
# block but the last (32x32: the last two).
ARCH = {
    32: ([4, 4, 4], [4, 4, 4], [4, 4, 4], [4, 4, 4, 4]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2], [1, 2, 4, 8], [1, 2, 4, 8, 16]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1], [1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1], [1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16]),
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1], [1, 1, 2, 4, 8, 8, 16], [1, 1, 2, 4, 8, 8, 16, 16]),
}


def resolutions() -> tuple[int, ...]:
    return tuple(ARCH)


class ConditionalBatchNorm(nn.Module):
    """Batch norm without its own affine; gain 1 + W_g y and bias W_b y from the conditioning vector y
    (the reference's ccbn). With CLASSES instead (conditional, no shared embedding: the reference's CIFAR
    networks), y is the class index and gain and bias come from this layer's own class embeddings, which
    stay unnormalized as every embedding of the reference's G. Neither (unconditional, not hierarchical):
    plain BN with its affine."""

    def __init__(self, channels: int, cond_dim: int, eps: float, classes: int = 0):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=not (cond_dim or classes))
        self.gain = self.bias = None
        if cond_dim:
            self.gain = nn.Linear(cond_dim, channels, bias=False)
            self.bias = nn.Linear(cond_dim, channels, bias=False)
        elif classes:
            self.gain, self.bias = nn.Embedding(classes, channels), nn.Embedding(classes, channels)
            self.gain.no_spectral_norm = self.bias.no_spectral_norm = True

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.bn(x)
        if self.gain is None:
            return out
        return out * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN's attention as the reference builds it: queries at every position, keys and values
    max-pooled 2x2, gamma (0 at init) times the output added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.o = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))  # 1-d, not 0-d: ZeRO flattens parameters through views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        theta = self.theta(x).flatten(2)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)
        g = F.max_pool2d(self.g(x), 2).flatten(2)
        beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # [n, hw, hw / 4]
        o = self.o((g @ beta.transpose(1, 2)).view(n, c // 2, h, w))
        return x + self.gamma * o


class GBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, eps: float, classes: int = 0):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(in_channels, cond_dim, eps, classes)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn2 = ConditionalBatchNorm(out_channels, cond_dim, eps, classes)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_sc = nn.Conv2d(in_channels, out_channels, 1)  # every G block upsamples: a learned skip

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.conv_sc(x)


class DBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, preactivation: bool, downsample: bool):
        super().__init__()
        self.preactivation, self.downsample = preactivation, downsample
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        learnable = in_channels != out_channels or downsample
        self.conv_sc = nn.Conv2d(in_channels, out_channels, 1) if learnable else None

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.preactivation:  # the reference's order: conv then pool after a pre-activated block
            x = self.conv_sc(x) if self.conv_sc is not None else x
            return F.avg_pool2d(x, 2) if self.downsample else x
        x = F.avg_pool2d(x, 2) if self.downsample else x
        return self.conv_sc(x) if self.conv_sc is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        return h + self._shortcut(x)


def _check_resolution(resolution: int) -> None:
    if resolution not in ARCH:
        raise ValueError(f"model.resolution: biggan is defined at {', '.join(map(str, ARCH))} (got {resolution})")


class BigGANGenerator(Generator):
    truncation = "resample"  # the paper's truncation trick: z entries beyond the threshold redrawn

    def __init__(self, spec: DataSpec, z_dim: int = 120, ch: int = 96, shared_dim: int = 128, hier: bool = True,
                 attention: tuple[int, ...] = (64,), bn_eps: float = 1e-5):
        super().__init__()
        _check_resolution(spec.resolution)
        g_in, g_out, _, _ = ARCH[spec.resolution]
        self.z_dim, self.num_classes, self.hier = z_dim, spec.num_classes, hier
        slots = len(g_in) + 1
        if hier and z_dim % slots:
            raise ValueError(f"model.z_dim: {z_dim} does not split into {slots} equal chunks (one per block and "
                             f"one for the input layer at {spec.resolution}x{spec.resolution}); use a multiple "
                             f"of {slots}, e.g. {slots * max(z_dim // slots, 1)}")
        if hier and spec.num_classes and not shared_dim:
            raise ValueError("model.hier: hierarchical latents join each chunk to the shared class embedding; a "
                             "conditional biggan with model.shared_dim 0 needs model.hier false (the reference's "
                             "CIFAR networks: one class embedding per batch norm)")
        self.chunk = z_dim // slots if hier else z_dim
        self.shared = nn.Embedding(spec.num_classes, shared_dim) if spec.num_classes and shared_dim else None
        if self.shared is not None:
            self.shared.no_spectral_norm = True  # the reference normalizes every layer but this one
        cond_dim = (shared_dim if self.shared is not None else 0) + (self.chunk if hier else 0)
        classes = spec.num_classes if self.shared is None else 0  # per-layer class embeddings instead
        self.linear = nn.Linear(self.chunk, g_in[0] * ch * 16)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        for i, (a, b) in enumerate(zip(g_in, g_out)):
            self.blocks.append(GBlock(a * ch, b * ch, cond_dim, bn_eps, classes))
            if 4 * 2 ** (i + 1) in attention:
                self.attention[str(i)] = SelfAttention(b * ch)
        self.out_bn = nn.BatchNorm2d(g_out[-1] * ch, eps=bn_eps)
        self.out_conv = nn.Conv2d(g_out[-1] * ch, spec.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.hier:
            zs = list(z.split(self.chunk, dim=1))
            z0, per_block = zs[0], zs[1:]
        else:
            z0, per_block = z, [None] * len(self.blocks)
        if self.shared is None and self.num_classes:  # per-layer class embeddings take the class index
            ys = [c] * len(self.blocks)
        else:
            shared = self.shared(c) if self.shared is not None else None
            ys = [torch.cat([t for t in (shared, zk) if t is not None], dim=1)
                  if (shared is not None or zk is not None) else None for zk in per_block]
        h = self.linear(z0).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, ys[i])
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class BigGANDiscriminator(Discriminator):
    def __init__(self, spec: DataSpec, ch: int = 96, attention: tuple[int, ...] = (64,)):
        super().__init__()
        _check_resolution(spec.resolution)
        _, _, d_in, d_out = ARCH[spec.resolution]
        self.num_classes = spec.num_classes
        ins = [spec.channels] + [m * ch for m in d_in]
        outs = [m * ch for m in d_out]
        keep = 2 if spec.resolution == 32 else 1  # blocks at the end that do not downsample
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        resolution = spec.resolution
        for i, (a, b) in enumerate(zip(ins, outs)):
            down = i < len(outs) - keep
            self.blocks.append(DBlock(a, b, preactivation=i > 0, downsample=down))
            resolution //= 2 if down else 1
            if resolution in attention:
                self.attention[str(i)] = SelfAttention(b)
        self.linear = nn.Linear(outs[-1], 1)
        self.embed = nn.Embedding(spec.num_classes, outs[-1]) if spec.num_classes else None

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None, features: bool = False):
        h = images
        for i, block in enumerate(self.blocks):
            h = block(h)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        h = F.relu(h).sum(dim=(2, 3))  # global sum pooling
        logits = self.linear(h).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(c) * h).sum(dim=1)  # projection (Miyato & Koyama 2018)
        return DOutput(logits, h, None) if features else logits
