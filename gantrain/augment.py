"""Differentiable augmentation of every image D sees, for training on small data sets.

- DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"): the
  paper's color (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]), translation (up to 1/8 of
  the size, zero fill) and cutout (a square of half the size), applied to every image, every time.
- ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"): the reference
  pipeline's ops (stylegan2-ada-pytorch, training/augment.py), each applied with probability p, with
  its parameters: x-flip, 90-degree rotations, integer translation (blit); isotropic scaling, rotation,
  anisotropic scaling, fractional translation (geom), sampled through a 2x-upsampled, sym6-filtered,
  reflect-padded image as the reference does; brightness, contrast, luma flip, hue, saturation (color);
  four frequency bands amplified by random gains through one 43-tap filter bank (filter); additive noise
  and cutout. p is adapted by the trainer (gantrain.train.loop) from r_t = E[sign D(real)].

Every random number is drawn through `Draws`, for the whole global batch, so an image's augmentation
depends only on the generator's state and its index in that batch (not on ranks or micro-batches).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gantrain.models.resample import downsample2d, upsample2d

DIFFAUGMENT_OPS = ("color", "translation", "cutout")

# The reference's pipes (augpipe_specs) as op weights.
_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
_BGCF = {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1}
PIPES = {"blit": _BLIT, "geom": _GEOM, "color": _COLOR, "filter": dict(imgfilter=1), "noise": dict(noise=1),
         "cutout": dict(cutout=1), "bg": {**_BLIT, **_GEOM}, "bgc": {**_BLIT, **_GEOM, **_COLOR}, "bgcf": _BGCF,
         "bgcfn": {**_BGCF, "noise": 1}, "bgcfnc": {**_BGCF, "noise": 1, "cutout": 1}}

# The reference's op parameters.
XINT_MAX, SCALE_STD, ROTATE_MAX, ANISO_STD, XFRAC_STD = 0.125, 0.2, 1.0, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, HUE_MAX, SATURATION_STD = 0.2, 0.5, 1.0, 1.0
NOISE_STD, CUTOUT_SIZE = 0.1, 0.5
IMGFILTER_STD = 1.0  # log2 of each band's gain ~ N(0, 1), for all four bands (imgfilter_bands [1, 1, 1, 1])
EXPECTED_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)  # the bands' share of an image's power (1/f)
# Symlet-2 low-pass (the reference's Hz_lo for the image-space filter bank).
SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
# Symlet-6 low-pass (the reference's Hz_geom): the anti-aliasing filter of the geometric ops.
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)


class Draws:
    """Random numbers for rows OFFSET .. OFFSET + n of a batch of TOTAL samples: each draw is made for all
    TOTAL from GENERATOR and this slice is kept, so splitting a batch does not change any sample's draw."""

    def __init__(self, generator: torch.Generator, offset: int = 0, total: int | None = None):
        self.generator, self.offset, self.total = generator, offset, total

    def _draw(self, fn, n: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        total = self.total or n
        x = fn((total, *shape), generator=self.generator, device=self.generator.device)
        return x[self.offset:self.offset + n].to(device)

    def rand(self, n: int, *shape: int, device: torch.device) -> torch.Tensor:
        return self._draw(torch.rand, n, shape, device)

    def randn(self, n: int, *shape: int, device: torch.device) -> torch.Tensor:
        return self._draw(torch.randn, n, shape, device)


# ---- DiffAugment -----------------------------------------------------------------------------------------
def diffaugment(x: torch.Tensor, policy: tuple[str, ...], draws: Draws) -> torch.Tensor:
    for op in policy:
        x = _DIFF_OPS[op](x, draws)
    return x


def _diff_color(x: torch.Tensor, draws: Draws) -> torch.Tensor:
    n, d = x.shape[0], x.device
    x = x + (draws.rand(n, 1, 1, 1, device=d) - 0.5).to(x.dtype)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (draws.rand(n, 1, 1, 1, device=d) * 2).to(x.dtype) + mean  # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (draws.rand(n, 1, 1, 1, device=d) + 0.5).to(x.dtype) + mean  # contrast


def _diff_translation(x: torch.Tensor, draws: Draws, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = (draws.rand(n, 1, 1, device=x.device) * (2 * sh + 1)).floor().long() - sh
    tx = (draws.rand(n, 1, 1, device=x.device) * (2 * sw + 1)).floor().long() - sw
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + ty + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # zeros beyond the border
    return padded[torch.arange(n, device=x.device).view(n, 1, 1), rows, cols].permute(0, 3, 1, 2)


def _diff_cutout(x: torch.Tensor, draws: Draws, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = (draws.rand(n, 1, 1, device=x.device) * (h + 1 - ch % 2)).floor() - ch // 2
    ox = (draws.rand(n, 1, 1, device=x.device) * (w + 1 - cw % 2)).floor() - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= oy) & (rows < oy + ch) & (cols >= ox) & (cols < ox + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_DIFF_OPS = {"color": _diff_color, "translation": _diff_translation, "cutout": _diff_cutout}


# ---- ADA ---------------------------------------------------------------------------------------------------
def _matrix(n: int, device: torch.device, *rows) -> torch.Tensor:
    """[n, R, C] matrices from rows of numbers or [n] tensors."""
    out = torch.zeros(n, len(rows), len(rows[0]), device=device)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            out[:, i, j] = value
    return out


def _translate2d(tx, ty, n, d):
    return _matrix(n, d, [1, 0, tx], [0, 1, ty], [0, 0, 1])


def _scale2d(sx, sy, n, d):
    return _matrix(n, d, [sx, 0, 0], [0, sy, 0], [0, 0, 1])


def _rotate2d(theta, n, d):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix(n, d, [c, -s, 0], [s, c, 0], [0, 0, 1])


def _rotate3d(axis: tuple[float, float, float], theta: torch.Tensor, n: int, d: torch.device) -> torch.Tensor:
    vx, vy, vz = axis
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix(n, d, [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                   [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                   [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0], [0, 0, 0, 1])


class _GridSample(torch.autograd.Function):
    """Bilinear grid_sample whose input gradient has a gradient too (R1 through augmented reals needs the
    double backward, which torch's grid_sample lacks). The grid is constant (drawn, not learned)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, grid = ctx.saved_tensors
        return _GridSampleBackward.apply(grad, x, grid), None


class _GridSampleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad: torch.Tensor, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grid)
        # interpolation 0 = bilinear, padding 0 = zeros; only the input's gradient
        return torch.ops.aten.grid_sampler_2d_backward(grad, x, grid, 0, 0, False, [True, False])[0]

    @staticmethod
    def backward(ctx, grad2: torch.Tensor):
        (grid,) = ctx.saved_tensors
        return _GridSample.apply(grad2, grid), None, None  # the operator is linear: its adjoint's adjoint


def _bilinear_gather(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """grid_sample (bilinear, zero padding, align_corners=False) as four gathers. CUDA has no deterministic
    grid_sample backward, so under `run.deterministic` on a GPU this is the path: gather's backward is
    deterministic there, and twice differentiable (R1). About 7x slower than grid_sample on CPU."""
    n, c, h, w = x.shape
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = ix.floor(), iy.floor()
    flat = x.flatten(2)
    out = torch.zeros(n, c, grid.shape[1] * grid.shape[2], dtype=x.dtype, device=x.device)
    for xk, wx in ((x0, x0 + 1 - ix), (x0 + 1, ix - x0)):
        for yk, wy in ((y0, y0 + 1 - iy), (y0 + 1, iy - y0)):
            inside = (xk >= 0) & (xk < w) & (yk >= 0) & (yk < h)
            index = (yk.clamp(0, h - 1) * w + xk.clamp(0, w - 1)).long().view(n, 1, -1).expand(-1, c, -1)
            out = out + flat.gather(2, index) * (wx * wy * inside).view(n, 1, -1).to(x.dtype)
    return out.view(n, c, *grid.shape[1:3])


def _reflect_pad_index(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """F.pad(mode="reflect") through index_select, whose CUDA backward is deterministic (reflection
    padding's is not), reflecting as often as a pad needs (F.pad allows pads smaller than the side only;
    the image filter's 21 exceeds a 16-pixel side)."""
    x0, x1, y0, y1 = pads
    h, w = x.shape[2:]

    def index(before: int, after: int, size: int) -> torch.Tensor:
        period = 2 * (size - 1)
        i = torch.remainder(torch.arange(-before, size + after, device=x.device), period)
        return torch.where(i >= size, period - i, i)

    return x.index_select(3, index(x0, x1, w)).index_select(2, index(y0, y1, h))


def _deterministic_gpu(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def filter_bank() -> torch.Tensor:
    """The reference's four-band filter bank [4, 43] (float64), built from the symlet-2 wavelet: band 0 the
    lowest frequencies, band 3 the highest (H(-z) H(-z^-1) / 2 at full rate). The rows sum to a unit
    impulse (the wavelet is orthogonal), so equal gains leave an image unchanged."""
    lo = np.asarray(SYM2)
    hi = lo * (-1.0) ** np.arange(lo.size)
    lo2, hi2 = np.convolve(lo, lo[::-1]) / 2, np.convolve(hi, hi[::-1]) / 2
    bank = np.eye(4, 1)
    for i in range(1, 4):
        up = np.zeros((4, bank.shape[1] * 2 - 1))  # upsample by 2: a zero between taps
        up[:, ::2] = bank
        bank = np.stack([np.convolve(row, lo2) for row in up])
        start = (bank.shape[1] - hi2.size) // 2
        bank[i, start:start + hi2.size] += hi2
    return torch.from_numpy(bank)


class AdaPipe:
    """The reference's augmentation pipeline for one pipe name; call with the current probability P."""

    def __init__(self, pipe: str):
        if pipe not in PIPES:
            raise ValueError(f"augment.pipe: unknown pipe '{pipe}' (one of {', '.join(PIPES)})")
        self.ops = PIPES[pipe]

    def __call__(self, x: torch.Tensor, p: float, draws: Draws) -> torch.Tensor:
        if p <= 0:
            return x
        if any(op in self.ops for op in (*_BLIT, *_GEOM)):
            x = self._geometric(x, p, draws)
        if any(op in self.ops for op in _COLOR):
            x = self._color(x, p, draws)
        if "imgfilter" in self.ops:
            x = self._imgfilter(x, p, draws)
        if "noise" in self.ops:
            n, d = x.shape[0], x.device
            sigma = draws.randn(n, 1, 1, 1, device=d).abs() * NOISE_STD
            sigma = torch.where(draws.rand(n, 1, 1, 1, device=d) < p, sigma, torch.zeros_like(sigma))
            x = x + draws.randn(n, *x.shape[1:], device=d).to(x.dtype) * sigma.to(x.dtype)
        if "cutout" in self.ops:
            x = self._cutout(x, p, draws)
        return x

    def _where(self, op: str, p: float, value: torch.Tensor, default: float, draws: Draws) -> torch.Tensor:
        keep = draws.rand(value.shape[0], device=value.device) < p * self.ops.get(op, 0)
        return torch.where(keep.view(-1, *([1] * (value.dim() - 1))), value, torch.full_like(value, default))

    def _geometric(self, x: torch.Tensor, p: float, draws: Draws) -> torch.Tensor:
        n, c, h, w = x.shape
        d = x.device
        g = torch.eye(3, device=d).expand(n, 3, 3)  # the inverse transform, output pixel -> input pixel
        ops = self.ops
        if ops.get("xflip"):
            i = self._where("xflip", p, (draws.rand(n, device=d) * 2).floor(), 0, draws)
            g = g @ _scale2d(1 - 2 * i, 1, n, d)
        if ops.get("rotate90"):
            i = self._where("rotate90", p, (draws.rand(n, device=d) * 4).floor(), 0, draws)
            g = g @ _rotate2d(math.pi / 2 * i, n, d)
        if ops.get("xint"):
            t = self._where("xint", p, (draws.rand(n, 2, device=d) * 2 - 1) * XINT_MAX, 0, draws)
            g = g @ _translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), n, d)
        if ops.get("scale"):
            s = self._where("scale", p, torch.exp2(draws.randn(n, device=d) * SCALE_STD), 1, draws)
            g = g @ _scale2d(1 / s, 1 / s, n, d)
        p_rot = 1 - math.sqrt(max(1 - ops.get("rotate", 0) * p, 0))  # two rotations: P(any) = p
        if ops.get("rotate"):
            theta = self._where("rotate", p_rot / ops["rotate"],
                                (draws.rand(n, device=d) * 2 - 1) * math.pi * ROTATE_MAX, 0, draws)
            g = g @ _rotate2d(theta, n, d)  # the inverse of a rotation by -theta
        if ops.get("aniso"):
            s = self._where("aniso", p, torch.exp2(draws.randn(n, device=d) * ANISO_STD), 1, draws)
            g = g @ _scale2d(1 / s, s, n, d)
        if ops.get("rotate"):
            theta = self._where("rotate", p_rot / ops["rotate"],
                                (draws.rand(n, device=d) * 2 - 1) * math.pi * ROTATE_MAX, 0, draws)
            g = g @ _rotate2d(theta, n, d)
        if ops.get("xfrac"):
            t = self._where("xfrac", p, draws.randn(n, 2, device=d) * XFRAC_STD, 0, draws)
            g = g @ _translate2d(-t[:, 0] * w, -t[:, 1] * h, n, d)
        return _transform(x, g)

    def _color(self, x: torch.Tensor, p: float, draws: Draws) -> torch.Tensor:
        n, c = x.shape[:2]
        d = x.device
        m = torch.eye(4, device=d).expand(n, 4, 4)
        v = torch.tensor([1, 1, 1, 0], dtype=torch.float32, device=d) / math.sqrt(3)  # the luma axis
        vv = torch.outer(v, v)
        ops = self.ops
        if ops.get("brightness"):
            b = self._where("brightness", p, draws.randn(n, device=d) * BRIGHTNESS_STD, 0, draws)
            m = _translate3d(b, n, d) @ m
        if ops.get("contrast"):
            s = self._where("contrast", p, torch.exp2(draws.randn(n, device=d) * CONTRAST_STD), 1, draws)
            m = _matrix(n, d, [s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]) @ m
        if ops.get("lumaflip"):
            i = self._where("lumaflip", p, (draws.rand(n, device=d) * 2).floor(), 0, draws)
            m = (torch.eye(4, device=d) - 2 * vv * i.view(n, 1, 1)) @ m  # Householder reflection
        if ops.get("hue") and c > 1:
            theta = self._where("hue", p, (draws.rand(n, device=d) * 2 - 1) * math.pi * HUE_MAX, 0, draws)
            m = _rotate3d((1 / math.sqrt(3),) * 3, theta, n, d) @ m
        if ops.get("saturation") and c > 1:
            s = self._where("saturation", p, torch.exp2(draws.randn(n, device=d) * SATURATION_STD), 1, draws)
            m = (vv + (torch.eye(4, device=d) - vv) * s.view(n, 1, 1)) @ m
        flat = x.reshape(n, c, -1)
        m = m.to(x.dtype)
        if c == 3:
            flat = m[:, :3, :3] @ flat + m[:, :3, 3:]
        else:  # one channel: the mean of the RGB rows (the reference's grayscale rule)
            m = m[:, :3, :].mean(dim=1, keepdim=True)
            flat = flat * m[:, :, :3].sum(dim=2, keepdim=True) + m[:, :, 3:]
        return flat.reshape(x.shape)

    def _imgfilter(self, x: torch.Tensor, p: float, draws: Draws) -> torch.Tensor:
        """Each of the four frequency bands amplified by 2^N(0, 1) with probability p, the gains normalized so
        the expected power stays put; one separable 43-tap filter per sample, reflect-padded (the reference's
        imgfilter)."""
        n, c, h, w = x.shape
        d = x.device
        bank = filter_bank().to(device=d, dtype=torch.float32)
        expected = torch.tensor(EXPECTED_POWER, device=d)
        gains = torch.ones(n, 4, device=d)
        for band in range(4):
            t_band = self._where("imgfilter", p, torch.exp2(draws.randn(n, device=d) * IMGFILTER_STD), 1, draws)
            t = torch.ones(n, 4, device=d).index_copy(1, torch.tensor([band], device=d), t_band.view(n, 1))
            gains = gains * t / (expected * t.square()).sum(dim=1, keepdim=True).sqrt()
        taps = (gains @ bank).repeat_interleave(c, dim=0).to(x.dtype)  # [n * c, 43], sample-major like x
        pad = bank.shape[1] // 2
        y = x.reshape(1, n * c, h, w)
        y = _reflect_pad_index(y, [pad] * 4)
        y = F.conv2d(y, taps.view(n * c, 1, 1, -1), groups=n * c)  # rows, then columns
        y = F.conv2d(y, taps.view(n * c, 1, -1, 1), groups=n * c)
        return y.reshape(n, c, h, w)

    def _cutout(self, x: torch.Tensor, p: float, draws: Draws) -> torch.Tensor:
        n, _, h, w = x.shape
        d = x.device
        size = self._where("cutout", p, torch.full((n,), CUTOUT_SIZE, device=d), 0, draws).view(n, 1, 1)
        center = draws.rand(n, 2, device=d)
        cols = ((torch.arange(w, device=d) + 0.5) / w).view(1, 1, w)
        rows = ((torch.arange(h, device=d) + 0.5) / h).view(1, h, 1)
        keep = ((cols - center[:, 0].view(n, 1, 1)).abs() >= size / 2) | \
            ((rows - center[:, 1].view(n, 1, 1)).abs() >= size / 2)
        return x * keep.unsqueeze(1).to(x.dtype)


def _translate3d(b: torch.Tensor, n: int, d: torch.device) -> torch.Tensor:
    return _matrix(n, d, [1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1])


def _transform(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Resample X through the inverse pixel transforms G [n, 3, 3] (centred pixel coordinates) as the
    reference does: reflect-pad by what the transform brings into view, upsample 2x with the sym6 filter,
    bilinear sampling, filter and downsample 2x."""
    n, c, h, w = x.shape
    d = x.device
    f = torch.as_tensor(SYM6, dtype=torch.float32, device=d)
    f = f / f.sum()  # 1-D: applied separably
    pad = f.shape[0] // 4
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=d)
    cp = g @ corners.t()  # [n, xyz, corner]
    margin = cp[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, n * corner]
    margin = torch.cat([-margin, margin]).max(dim=1).values  # [x0, y0, x1, y1]
    margin = margin + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, device=d)
    margin = margin.clamp(min=0).minimum(torch.tensor([w - 1, h - 1] * 2, dtype=torch.float32, device=d))
    mx0, my0, mx1, my1 = (int(m) for m in margin.ceil().tolist())
    deterministic = _deterministic_gpu(x)
    pads = [mx0, mx1, my0, my1]
    x = _reflect_pad_index(x, pads) if deterministic else F.pad(x, pads, mode="reflect")
    g = _translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, n, d) @ g
    x = upsample2d(x, f, up=2)
    g = _scale2d(2, 2, n, d) @ g @ _scale2d(0.5, 0.5, n, d)
    g = _translate2d(-0.5, -0.5, n, d) @ g @ _translate2d(0.5, 0.5, n, d)
    shape = [n, c, (h + pad * 2) * 2, (w + pad * 2) * 2]
    g = _scale2d(2 / x.shape[3], 2 / x.shape[2], n, d) @ g @ _scale2d(shape[3] / 2, shape[2] / 2, n, d)
    grid = F.affine_grid(g[:, :2, :].to(x.dtype), shape, align_corners=False)
    x = _bilinear_gather(x, grid) if deterministic else _GridSample.apply(x, grid)
    return downsample2d(x, f, down=2, padding=-pad * 2, flip=False)


class Augment:
    """What the trainer calls on every D input: `augment.name` none | diffaugment | ada."""

    def __init__(self, name: str, policy: str = "color,translation,cutout", pipe: str = "bgc"):
        self.name = name
        self.policy = tuple(op.strip() for op in policy.split(",") if op.strip())
        unknown = [op for op in self.policy if op not in DIFFAUGMENT_OPS]
        if name == "diffaugment" and (unknown or not self.policy):
            raise ValueError(f"augment.policy: unknown op(s) {', '.join(unknown) or '(none given)'} "
                             f"(DiffAugment's are {', '.join(DIFFAUGMENT_OPS)})")
        self.pipe = AdaPipe(pipe) if name == "ada" else None

    def __call__(self, x: torch.Tensor, p: float, draws: Draws) -> torch.Tensor:
        if self.name == "diffaugment":
            return diffaugment(x, self.policy, draws)
        if self.pipe is not None:
            return self.pipe(x, p, draws)
        return x


def adjust_p(p: float, rt: float, target: float, images: int, speed_kimg: float) -> float:
    """ADA's controller: p moves by IMAGES / (speed_kimg * 1000) towards more augmentation when
    r_t = E[sign D(real)] is above TARGET (D overfits), towards less when below; clamped to [0, 1]."""
    step = math.copysign(images / (speed_kimg * 1000), rt - target) if rt != target else 0.0
    return min(max(p + step, 0.0), 1.0)
