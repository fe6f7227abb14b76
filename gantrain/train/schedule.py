"""What to train at a given point: a pure function of the images seen (ProGAN's TrainingSchedule).

With `progressive.enabled` the run starts at `start_resolution`, stabilizes there for stabilize_kimg,
then for each doubling fades the new block in over fade_kimg (alpha rising from 0 to 1) and stabilizes
again; the last resolution stabilizes until the end. Batch size and learning rates come from
per-resolution tables. Without it, one stage at the model's resolution for the whole run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gantrain.config import Config

FADES = {
    "linear": lambda t: t,
    "cosine": lambda t: (1 - math.cos(math.pi * t)) / 2,  # zero slope at both ends
    "smoothstep": lambda t: t * t * (3 - 2 * t),
}


@dataclass(frozen=True)
class Stage:
    resolution: int
    alpha: float  # weight of the newest block; 1 outside a fade
    phase: str  # "stabilize" or "fade"
    batch: int  # global batch
    g_lr: float
    d_lr: float

    @property
    def structure(self) -> tuple[int, bool]:
        """What decides which modules take part: a change means re-wrapping the networks."""
        return self.resolution, self.alpha < 1


class Schedule:
    def __init__(self, cfg: Config, final_resolution: int):
        self.cfg, self.final = cfg, final_resolution
        p = cfg.progressive
        start = p.start_resolution if p.enabled else final_resolution
        self.resolutions = [2 ** i for i in range(int(math.log2(start)), int(math.log2(final_resolution)) + 1)]
        self.stabilize = round(p.stabilize_kimg * 1000)
        self.fade = round(p.fade_kimg * 1000)
        self.curve = FADES[p.fade]

    def at(self, nimg: int) -> Stage:
        level, alpha, phase = 0, 1.0, "stabilize"
        if len(self.resolutions) > 1:
            t = nimg - self.stabilize  # images since the first resolution's stabilization ended
            period = self.fade + self.stabilize
            while t >= 0 and level < len(self.resolutions) - 1:
                level += 1
                if t < self.fade:
                    alpha, phase = self.curve(t / self.fade), "fade"
                    break
                t -= period
        return self._stage(self.resolutions[level], alpha, phase)

    def _stage(self, resolution: int, alpha: float, phase: str) -> Stage:
        p, o = self.cfg.progressive, self.cfg.optim
        if not p.enabled:
            return Stage(resolution, alpha, phase, self.cfg.train.batch, o.g_lr, o.d_lr)
        return Stage(resolution, alpha, phase, p.batch.get(resolution, self.cfg.train.batch),
                     p.g_lr.get(resolution, o.g_lr), p.d_lr.get(resolution, o.d_lr))

    def boundaries(self) -> list[int]:
        """Image counts at which the structure changes (start and end of each fade)."""
        out, t = [], self.stabilize
        for _ in self.resolutions[1:]:
            out += [t, t + self.fade] if self.fade else [t]
            t += self.fade + self.stabilize
        return out
