"""FIR resampling (the reference's upfirdn2d) in plain PyTorch ops: StyleGAN2's up/downsampling and the
augmentation pipe's anti-aliased geometric transforms share it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FIR = (1, 3, 3, 1)


def fir_filter(taps=FIR) -> torch.Tensor:
    """The separable low-pass filter as a normalized 2-D kernel (outer product, sum 1)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=(0, 0, 0, 0),
              gain: float = 1, flip: bool = True) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), convolve every channel with the
    filter F (2-D, or 1-D applied separably; FLIP: a true convolution, as the reference does by default;
    else a correlation), keep every DOWN-th pixel."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = padding
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0):x.shape[2] - max(-y1, 0), max(-x0, 0):x.shape[3] - max(-x1, 0)]
    kernel = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    kernel = kernel.flip(list(range(f.ndim))) if flip else kernel
    for k in ((kernel[None, :], kernel[:, None]) if f.ndim == 1 else (kernel,)):  # 1-D: rows, then columns
        x = F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, padding: int = 0) -> torch.Tensor:
    fw = f.shape[-1]
    p0, p1 = padding + (fw + up - 1) // 2, padding + (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2, padding: int = 0, flip: bool = True) -> torch.Tensor:
    fw = f.shape[-1]
    p0, p1 = padding + (fw - down + 1) // 2, padding + (fw - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1), flip=flip)
