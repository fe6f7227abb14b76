"""Latents, batched generation and image grids, shared by training snapshots and `gantrain sample`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from gantrain.atomic import atomic_open
from gantrain.models import Generator


def latents(n: int, G: Generator, seed: int, rows: int | None = None, class_index: int | None = None,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """N latents from SEED; for a conditional G the labels are CLASS_INDEX, or one class per grid row."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    c = None
    if G.num_classes:
        if class_index is not None:
            c = torch.full((n,), class_index, dtype=torch.int64)
        else:
            per_row = max(n // (rows or 1), 1)
            c = (torch.arange(n) // per_row) % G.num_classes
    return z.to(device), None if c is None else c.to(device)


@torch.no_grad()
def generate(G: Generator, z: torch.Tensor, c: torch.Tensor | None, batch: int = 64) -> torch.Tensor:
    chunks = [G(z[i:i + batch], None if c is None else c[i:i + batch]) for i in range(0, len(z), batch)]
    return torch.cat(chunks).float().cpu()


@torch.no_grad()
def standing_stats(G: Generator, passes: int, batch: int = 64, seed: int = 0) -> int:
    """BigGAN's standing statistics (BigGAN-PyTorch's accumulate_standing_stats): every batch norm's running
    mean and variance reset, then recomputed as the plain average of the per-batch statistics over PASSES
    training-mode forwards of BATCH untruncated latents with uniformly drawn classes (torch's cumulative
    average, momentum None). Nothing else changes: weights, the other buffers and each layer's momentum and
    mode are as before. The reference averages biased batch variances, torch's running_var averages
    unbiased ones: a factor n / (n - 1) with n = batch x height x width per batch, 1.001 at 64 x 4 x 4.
    Returns the number of batch norms updated (0: G has none)."""
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or passes < 1:
        return 0
    settings = [(m.momentum, m.training) for m in norms]
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for _ in range(passes):
            z = torch.randn(batch, G.z_dim, generator=gen)
            c = torch.randint(0, G.num_classes, (batch,), generator=gen) if G.num_classes else None
            G(z.to(device), None if c is None else c.to(device))
    finally:
        for m, (momentum, training) in zip(norms, settings):
            m.momentum = momentum
            m.train(training)
    return len(norms)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8, the inverse of the loader's x / 127.5 - 1."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, cols: int) -> torch.Tensor:
    """[N, C, H, W] uint8 -> [C, rows*H, cols*W], row-major; short rows padded with black."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    if rows * cols != n:
        images = torch.cat([images, images.new_zeros(rows * cols - n, c, h, w)])
    return images.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)


def upscale(grid: torch.Tensor, scale: int) -> torch.Tensor:
    """[C, H, W] enlarged SCALE times by pixel repetition (nearest): cells stay sharp and exact."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1 (got {scale})")
    return grid if scale == 1 else grid.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def readable_scale(grid: torch.Tensor, target: int = 512) -> int:
    """The integer upscaling that brings a grid's longer side to about TARGET pixels (1 if already there)."""
    return max(1, target // max(grid.shape[-2:]))


LABEL_FONT_SIZE = 11


def label_columns(grid: torch.Tensor, labels: list[str], short: list[str] | None = None) -> torch.Tensor:
    """GRID ([C, H, W] uint8, len(LABELS) equal columns) with a white strip above, each column's label centred
    in it; SHORT labels are used where the long ones do not fit a column."""
    c, h, w = grid.shape
    cell = w // len(labels)
    font = ImageFont.load_default(size=LABEL_FONT_SIZE)
    strip = Image.new("L", (w, LABEL_FONT_SIZE + 6), 255)
    draw = ImageDraw.Draw(strip)
    if short and max(draw.textlength(t, font=font) for t in labels) > cell - 2:
        labels = short
    for i, text in enumerate(labels):
        draw.text((i * cell + (cell - draw.textlength(text, font=font)) / 2, 2), text, fill=0, font=font)
    header = torch.from_numpy(np.array(strip)).expand(c, -1, -1)
    return torch.cat([header, grid], dim=1)


def save_png(grid: torch.Tensor, path: str | Path, scale: int = 1) -> None:
    array = upscale(grid, scale).cpu().numpy()
    image = Image.fromarray(array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0)))
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
