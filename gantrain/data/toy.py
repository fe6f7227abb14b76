"""Toy problems that show GAN dynamics in seconds, trained by the normal loop (`data.toy.name`).

- dirac: the Dirac-GAN of Mescheder et al. 2018 (data: a point mass at 0; models `dirac`). Figures:
  theta, psi and the distance sqrt(theta^2 + psi^2) to the equilibrium (0, 0).
- ring: a mixture of `modes` Gaussians evenly spaced on a circle (Metz et al. 2017); the mode index is
  the class label. Figures (Srivastava et al. 2017): the fraction of high-quality samples (within 3 std
  of the nearest mode) and the number of modes covered (a mode is covered when at least
  COVERED_SHARE of all samples are high-quality samples of that mode).

The loader has the shard loader's interface (next() -> (samples, labels), state_dict, skipped, close):
each call draws the micro-batch of every rank from one checkpointed generator and keeps this rank's
slice, so the data seen does not depend on the world size and resume is exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from gantrain.config import ToyConfig
from gantrain.models.base import DataSpec

COVERED_SHARE = 0.02  # with 2,500 samples: 50 high-quality samples (VEEGAN's 8-Gaussian protocol count)
EVAL_SEED = 321


class ToyProblem:
    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg
        self.dims = 1 if cfg.name == "dirac" else 2
        self.num_classes = cfg.modes if cfg.name == "ring" else 0
        angles = torch.arange(cfg.modes, dtype=torch.float64) * (2 * math.pi / cfg.modes)
        self.centers = (cfg.radius * torch.stack([angles.cos(), angles.sin()], 1)).float()

    @property
    def spec(self) -> DataSpec:
        return DataSpec(resolution=1, channels=self.dims, num_classes=self.num_classes)

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.name == "dirac":
            return torch.zeros(n, 1), torch.zeros(n, dtype=torch.int64)
        labels = torch.randint(self.cfg.modes, (n,), generator=gen)
        return self.centers[labels] + self.cfg.std * torch.randn(n, 2, generator=gen), labels

    @torch.no_grad()
    def evaluate(self, G: nn.Module, D: nn.Module, device: torch.device) -> dict[str, float]:
        """Convergence (dirac) or coverage (ring) figures of the trained G (not G_ema: an average of
        oscillating weights would hide the oscillation these problems are about)."""
        was_training = G.training
        G.eval()
        try:
            if self.cfg.name == "dirac":
                theta = G(torch.zeros(1, G.z_dim, device=device)).flatten().float().cpu()
                psi = torch.cat([p.detach().flatten() for p in D.parameters()]).float().cpu()
                return {"Toy/theta": theta[0].item(), "Toy/psi": psi[0].item(),
                        "Toy/distance": torch.cat([theta, psi]).norm().item()}
            points = self.generate(G, self.cfg.eval_samples, device)
            return self.coverage(points)
        finally:
            G.train(was_training)

    def generate(self, G: nn.Module, n: int, device: torch.device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(EVAL_SEED)
        z = torch.randn(n, G.z_dim, generator=gen).to(device)
        c = torch.randint(self.num_classes, (n,), generator=gen).to(device) if G.num_classes else None
        return G(z, c).float().cpu()

    def coverage(self, points: torch.Tensor) -> dict[str, float]:
        dist = torch.cdist(points, self.centers)  # [N, modes]
        nearest, mode = dist.min(1)
        good = nearest < 3 * self.cfg.std
        counts = torch.bincount(mode[good], minlength=self.cfg.modes)
        covered = int((counts >= max(1, COVERED_SHARE * len(points))).sum())
        return {"Toy/modes_covered": float(covered), "Toy/high_quality": good.float().mean().item()}

    def render(self, G: nn.Module | None, device: torch.device, size: int = 256) -> torch.Tensor | None:
        """A scatter plot as a uint8 [3, size, size] image: real samples blue, G's samples white (ring only)."""
        if self.cfg.name != "ring":
            return None
        extent = self.cfg.radius + 6 * self.cfg.std + 0.5
        image = np.zeros((size, size, 3), np.uint8)

        def plot(points: torch.Tensor, color: tuple[int, int, int]) -> None:
            xy = ((points.numpy() + extent) / (2 * extent) * (size - 1)).round().astype(int)
            keep = ((xy >= 0) & (xy < size)).all(1)
            image[size - 1 - xy[keep, 1], xy[keep, 0]] = color

        plot(self.sample(self.cfg.eval_samples, torch.Generator().manual_seed(EVAL_SEED))[0], (60, 120, 255))
        if G is not None:
            with torch.no_grad():
                plot(self.generate(G, self.cfg.eval_samples, device), (255, 255, 255))
        return torch.from_numpy(image).permute(2, 0, 1).contiguous()


class ToyLoader:
    def __init__(self, problem: ToyProblem, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 state: dict[str, Any] | None = None):
        self.problem, self.batch_size, self.rank, self.world_size = problem, batch_size, rank, world_size
        self.gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 2]).generate_state(1)[0]))
        if state is not None:
            self.gen.set_state(state["generator"])
        self.skipped = self.short_shards = self.lost_shards = 0  # nothing to decode, nothing to skip
        self.notes: dict[str, str] = {}

    def __iter__(self) -> ToyLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, c = self.problem.sample(self.batch_size * self.world_size, self.gen)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return x[mine], c[mine]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state()}

    def close(self) -> None:
        pass
