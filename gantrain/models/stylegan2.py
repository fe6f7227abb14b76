"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"), network for
network as the reference implementation (NVlabs stylegan2-ada-pytorch, training/networks.py) builds it:
the same layers, parameter shapes, initialization, equalized learning rates, channel counts and
resampling, written in plain PyTorch ops (no custom CUDA extension).

- Mapping: z normalized by its second moment, a class embedding (normalized, concatenated) when
  conditional, `num_layers` fully connected layers at lr multiplier 0.01, `w_avg` tracked with beta 0.995
  while training, w broadcast to one copy per synthesis input (`num_ws`), truncation toward `w_avg`.
- Synthesis: a learned 4x4 constant; per resolution two modulated 3x3 convolutions with weight
  demodulation (grouped convolution: one kernel serves the batch), the first upsampling by 2 through
  the [1, 3, 3, 1] FIR filter; per-pixel noise with a learned strength per layer; bias + LeakyReLU(0.2)
  with gain sqrt(2); a toRGB per resolution summed through upsampling ("skip"). The sum is the image, as in
  the reference; `output="tanh"` (not in the reference) bounds it to [-1, 1] for data whose pixels sit at
  the range's ends, where an unbounded G cannot match a flat background (docs/benchmarks.md).
- Discriminator: residual blocks ("resnet", or "orig") with fromRGB at the top, FIR downsampling, a
  minibatch-stddev epilogue, two fully connected layers; projection conditioning through an embedded
  label ("cmap") when conditional.

Mixed precision as the reference does it (`num_fp16_res` top resolutions in half precision) is not
wired to the engine's precision yet: every layer computes in its input's dtype, and `conv_clamp`
clamps activations as the reference does whenever it is set.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gantrain.models.base import DataSpec, Discriminator, Generator, truncate_ws
from gantrain.models.layers import DOutput, MinibatchStdDev
from gantrain.models.resample import fir_filter, upfirdn2d, upsample2d

LRELU_GAIN = math.sqrt(2)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1) -> torch.Tensor:
    """A convolution with the FIR filter's up- or downsampling around it, in the reference's order: a
    strided transposed convolution then the filter (up), the filter then a strided convolution (down)."""
    out_channels, in_per_group, kh, kw = w.shape
    fw = 1 if f is None else f.shape[-1]
    p0 = p1 = padding
    if up > 1:
        p0 += (fw + up - 1) // 2
        p1 += (fw - up) // 2
    if down > 1:
        p0 += (fw - down + 1) // 2
        p1 += (fw - down) // 2
    if kw == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))
        return F.conv2d(x, w, groups=groups)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=(p0, p1, p0, p1))
        return F.conv2d(x, w, stride=down, groups=groups)
    if up > 1:
        # [G*O, I, k, k] -> [G*I, O, k, k]: the transposed convolution's weight layout, per group
        wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        p0 -= kw - 1
        p1 -= kw - up
        pt = max(min(-p0, -p1), 0)
        x = F.conv_transpose2d(x, wt, stride=up, padding=pt, groups=groups)
        return upfirdn2d(x, f, padding=(p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up * up)
    return F.conv2d(x, w, padding=padding, groups=groups)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float = 1,
             clamp: float | None = None) -> torch.Tensor:
    if b is not None:
        x = x + b.reshape(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    if gain != 1:
        x = x * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ---- layers ------------------------------------------------------------------------------------------
class FullyConnected(nn.Module):
    """Equalized learning rate: weights drawn N(0, 1) / lr_multiplier, scaled by lr_multiplier / sqrt(in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1, bias_init: float = 0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation, gain=LRELU_GAIN if self.activation == "lrelu" else 1)


class Conv2dLayer(nn.Module):
    """An equalized-lr convolution with optional FIR up/downsampling, bias and activation (D's layers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", fir_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=self.act_gain * gain, clamp=clamp)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, f: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, demodulate: bool = True, fused: bool = True) -> torch.Tensor:
    """Scale the kernel's input channels by each sample's style, normalize every output channel to unit L2
    norm (demodulation). FUSED: every sample's own kernel, all samples as one grouped convolution; else
    (the reference's training path, the same function) the activations are scaled by the styles, convolved
    with the shared kernel, and the outputs scaled by the demodulation coefficients, which is a plain
    batched convolution (G+D forward and backward 1.2-1.4x faster on CPU, docs/benchmarks.md)."""
    n = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # the reference's guard against fp16 overflow
        peak = weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        weight = weight * (1 / math.sqrt(in_channels * kh * kw) / peak)
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f, up=up, padding=padding)
        if demodulate:
            dcoefs = ((weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)).square().sum(dim=[2, 3, 4]) + 1e-8)
            x = x * dcoefs.rsqrt().to(x.dtype).reshape(n, -1, 1, 1)
        return x
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(-1, in_channels, kh, kw).to(x.dtype), f, up=up, padding=padding, groups=n)
    return x.reshape(n, -1, *x.shape[2:])


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", fir_filter())
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            # [1], not the reference's 0-d scalar: DeepSpeed's CPU broadcast cannot view a 0-d tensor as bytes
            self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", gain: float = 1) -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, self.resample_filter, up=self.up, padding=self.padding,
                             fused=not self.training)
        if self.use_noise and noise_mode != "none":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype) \
                if noise_mode == "random" else self.noise_const.to(x.dtype)
            x = x + noise * self.noise_strength.to(x.dtype)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, "lrelu", gain=LRELU_GAIN * gain, clamp=clamp)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=not self.training)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", conv_clamp: float | None = None, reduced: bool = False):
        super().__init__()
        self.in_channels, self.resolution, self.is_last, self.architecture = in_channels, resolution, is_last, \
            architecture
        self.reduced = reduced  # computes in the engine's fp16/bf16 (the reference's use_fp16)
        self.register_buffer("resample_filter", fir_filter())
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
        with precision(self.reduced, ws):
            if not self.reduced:  # inputs that an earlier block or the mapping computed in fp16/bf16
                ws, x = ws.float(), None if x is None else x.float()
            w = iter(ws.unbind(dim=1))
            if self.in_channels == 0:
                x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            else:
                x = self.conv0(x, next(w), noise_mode)
            x = self.conv1(x, next(w), noise_mode)
            y = self.torgb(x, next(w)) if self.is_last or self.architecture == "skip" else None
        if img is not None:  # the image sum stays fp32, as in the reference
            with precision(False, img):
                img = upsample2d(img.float(), self.resample_filter)
        if y is not None:
            img = y.float() if img is None else img + y.float()
        return x, img


def fp16_from(img_resolution: int, num_fp16_res: int) -> int:
    """The lowest resolution whose block computes in reduced precision: the top NUM_FP16_RES ones, never
    below 8x8 (the reference's rule); 0 blocks: none."""
    return max(2 ** (int(np.log2(img_resolution)) + 1 - num_fp16_res), 8) if num_fp16_res else img_resolution * 2


def precision(reduced: bool, x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Inside a block: the engine's autocast as it is (fp16/bf16 or fp32) for a reduced-precision block,
    autocast off for the others, so only the top resolutions compute in fp16/bf16 (and the model never
    picks a dtype itself: with engine.precision fp32 everything is fp32)."""
    return contextlib.nullcontext() if reduced else torch.autocast(x.device.type, enabled=False)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """The reference's feature-map count per resolution."""
    return min(channel_base // resolution, channel_max)


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None, num_fp16_res: int = 0,
                 output: str = "linear"):
        super().__init__()
        if output not in ("linear", "tanh"):
            raise ValueError(f"model.output: linear or tanh (got {output!r})")
        reduced_from = fp16_from(img_resolution, num_fp16_res)
        self.w_dim, self.img_resolution, self.output = w_dim, img_resolution, output
        self.block_resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
        self.num_ws = 0
        self.blocks = nn.ModuleDict()
        for res in self.block_resolutions:
            in_channels = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            block = SynthesisBlock(in_channels, channels_at(res, channel_base, channel_max), w_dim, res,
                                   img_channels, is_last=res == img_resolution, conv_clamp=conv_clamp,
                                   reduced=res >= reduced_from)
            self.blocks[str(res)] = block
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.dim() == 2:  # one w for every layer
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        x = img = None
        index = 0
        for block in self.blocks.values():
            x, img = block(x, img, ws.narrow(1, index, block.num_conv + block.num_torgb), noise_mode)
            index += block.num_conv
        return torch.tanh(img) if self.output == "tanh" else img


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        embed_features = w_dim if c_dim else 0
        features = [z_dim + embed_features] + [w_dim] * num_layers
        if c_dim:
            self.embed = FullyConnected(c_dim, embed_features)
        self.layers = nn.ModuleList(FullyConnected(features[i], features[i + 1], activation="lrelu",
                                                   lr_multiplier=lr_multiplier) for i in range(num_layers))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, psi: float = 1,
                cutoff: int | None = None, update_w_avg: bool = True) -> torch.Tensor:
        device = (z if z is not None else c).device
        with torch.autocast(device.type, enabled=False):  # fp32 always, as in the reference
            return self._forward(z, c, psi, cutoff, update_w_avg)

    def _forward(self, z, c, psi, cutoff, update_w_avg) -> torch.Tensor:
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim:
            onehot = F.one_hot(c.long(), self.c_dim).float() if c.dim() == 1 else c.float()
            parts.append(normalize_2nd_moment(self.embed(onehot)))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)
        if self.num_ws is None:
            return x
        if self.w_avg_beta is not None and self.training and update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        return truncate_ws(x, self.w_avg, psi, cutoff)


class StyleGAN2Generator(Generator):
    """mapping(z, c) -> ws [N, num_ws, w_dim]; synthesis(ws) -> images; forward does both, with style mixing
    (a second latent from a random layer on, with probability `style_mixing`) while training."""

    stochastic = True  # noise inputs and style mixing draw from torch's default generator

    def __init__(self, spec: DataSpec, z_dim: int = 512, w_dim: int = 512, mapping_layers: int = 8,
                 channel_base: int = 32768, channel_max: int = 512, conv_clamp: float | None = None,
                 style_mixing: float = 0.9, noise_mode: str = "random", num_fp16_res: int = 0,
                 output: str = "linear"):
        super().__init__()
        self.z_dim, self.num_classes, self.w_dim = z_dim, spec.num_classes, w_dim
        self.style_mixing, self.noise_mode = style_mixing, noise_mode
        self.synthesis_net = SynthesisNetwork(w_dim, spec.resolution, spec.channels, channel_base, channel_max,
                                              conv_clamp, num_fp16_res, output)
        self.num_ws = self.synthesis_net.num_ws
        self.mapping_net = MappingNetwork(z_dim, spec.num_classes, w_dim, self.num_ws, mapping_layers)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping_net.w_avg

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1, cutoff: int | None = None,
                update_w_avg: bool = True) -> torch.Tensor:
        return self.mapping_net(z, c, psi, cutoff, update_w_avg)

    def synthesis(self, ws: torch.Tensor, noise_mode: str | None = None) -> torch.Tensor:
        return self.synthesis_net(ws, noise_mode or self.noise_mode)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, return_ws: bool = False):
        """Images; with RETURN_WS also the ws [N, num_ws, w_dim] they were synthesized from (after style
        mixing), for regularizers that differentiate with respect to them (path length)."""
        ws = self.mapping(z, c)
        if self.training and self.style_mixing > 0 and self.num_ws > 1:
            cutoff = int(torch.randint(1, self.num_ws, ()))
            if float(torch.rand(())) < self.style_mixing:
                ws = torch.cat([ws[:, :cutoff], self.mapping(torch.randn_like(z), c, update_w_avg=False)[:, cutoff:]],
                               dim=1)
        img = self.synthesis(ws)
        return (img, ws) if return_ws else img


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 architecture: str = "resnet", conv_clamp: float | None = None, reduced: bool = False):
        super().__init__()
        self.in_channels, self.architecture, self.reduced = in_channels, architecture, reduced
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        with precision(self.reduced, img):
            if x is not None and not self.reduced:
                x = x.float()
            if self.in_channels == 0 or self.architecture == "skip":
                y = self.fromrgb(img)
                x = y if x is None else x + y
            if self.architecture == "resnet":
                y = self.skip(x, gain=math.sqrt(0.5))
                return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            return self.conv1(self.conv0(x))


class StyleGAN2Discriminator(Discriminator):
    def __init__(self, spec: DataSpec, channel_base: int = 32768, channel_max: int = 512,
                 architecture: str = "resnet", mbstd_group: int = 4, mbstd_channels: int = 1,
                 conv_clamp: float | None = None, cmap_dim: int | None = None, mapping_layers: int = 8,
                 num_fp16_res: int = 0):
        super().__init__()
        if architecture not in ("resnet", "orig"):
            raise ValueError(f"model.d_architecture: resnet or orig (got {architecture!r})")
        self.num_classes = spec.num_classes
        res_log2 = int(np.log2(spec.resolution))
        self.block_resolutions = [2 ** i for i in range(res_log2, 2, -1)]
        ch = {res: channels_at(res, channel_base, channel_max) for res in [*self.block_resolutions, 4]}
        self.cmap_dim = (ch[4] if cmap_dim is None else cmap_dim) if spec.num_classes else 0
        reduced_from = fp16_from(spec.resolution, num_fp16_res)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[res] if res < spec.resolution else 0, ch[res], ch[res // 2], spec.channels,
                               architecture, conv_clamp, res >= reduced_from) for res in self.block_resolutions)
        if spec.num_classes:
            self.mapping = MappingNetwork(0, spec.num_classes, self.cmap_dim, None, mapping_layers, w_avg_beta=None)
        self.mbstd = MinibatchStdDev(mbstd_group, mbstd_channels) if mbstd_channels else None
        self.conv = Conv2dLayer(ch[4] + mbstd_channels, ch[4], 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnected(ch[4] * 16, ch[4], activation="lrelu")
        self.out = FullyConnected(ch[4], self.cmap_dim or 1)

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None, features: bool = False):
        x = None
        for block in self.blocks:
            x = block(x, images)
        with precision(False, images):  # the epilogue is fp32, as in the reference
            x = x.float()
            if self.mbstd is not None:
                x = self.mbstd(x)
            hidden = self.fc(self.conv(x).flatten(1))
            x = self.out(hidden)
            if self.cmap_dim:
                cmap = self.mapping(None, c)
                x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        logits = x.squeeze(1)
        return DOutput(logits, hidden, None) if features else logits
