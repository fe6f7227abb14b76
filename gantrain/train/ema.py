"""Exponential moving average of G's weights, with the StyleGAN2-ADA half-life and ramp-up.

The half-life is measured in images, so the average spans the same amount of training whatever the
batch size. Buffers (batch-norm running statistics) are copied, not averaged, as in StyleGAN2-ADA:
averaged running statistics would not match any set of weights G_ema actually has.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch: int, nimg: int, ema_kimg: float, rampup: float | None, start_kimg: float = 0.0) -> float:
    """Decay for one step of BATCH images taken when NIMG images had been seen; 0 (G_ema copies G) until
    START_KIMG (BigGAN's ema_start)."""
    if nimg < start_kimg * 1000:
        return 0.0
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, nimg * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model, parameter by parameter; buffers copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().to(p_ema.dtype).lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
