"""Timing full training steps, for the benchmarks and the GPU check: one Trainer, fed decoded batches from
memory (the figures measure the networks and the loop, not the reader), warm-up steps, then timed steps.
Each setting should run in its own process so that its peak memory is its own."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch

from gantrain.config import Config
from gantrain.data.stream import Manifest
from gantrain.engines.base import Engine


class InMemory:
    """Random uint8 images of the right shape and random labels, batch after batch (stands in for
    Trainer.loader)."""

    def __init__(self, batch: int, channels: int, resolution: int, num_classes: int = 0):
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (batch, channels, resolution, resolution), generator=gen,
                                    dtype=torch.uint8)
        self.labels = torch.randint(0, max(num_classes, 1), (batch,), generator=gen)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def close(self) -> None:
        pass


def time_steps(cfg: Config, manifest: Manifest, device: str, precision: str, warmup: int, steps: int,
               compiled: bool = False, engine: Engine | None = None) -> dict:
    """WARMUP then STEPS training steps of a resolved CFG on one process (or on this rank of ENGINE's
    group: every rank must call it); img/s (this rank's micro-batches x accumulation; the global batch under a
    group), s/kimg, peak memory (CUDA allocated on a GPU, the process's peak RSS on CPU), parameter counts,
    whether the weights stayed finite, and the warm-up's seconds (under engine.compile: building the graphs)."""
    from gantrain.engines.single import SingleEngine
    from gantrain.train.loop import Trainer

    cuda = device.startswith("cuda")
    engine = engine or SingleEngine(device, precision, compiled)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), engine, manifest=manifest)
        trainer.loader.close()
        batch = trainer.stage.batch  # a progressive stage sets its own
        trainer.loader = InMemory(trainer.micro, manifest.channels, trainer.stage.resolution, manifest.num_classes)
        warm = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        warm = time.perf_counter() - warm
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        nets = (trainer.G_model, trainer.D_model)
        finite = all(torch.isfinite(p).all().item() for m in nets for p in m.parameters())
        resolution = trainer.stage.resolution
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"precision": precision, "device": device, "resolution": resolution, "batch": batch, "steps": steps,
            "img_per_sec": round(batch * steps / seconds, 2),
            "sec_per_kimg": round(seconds / (batch * steps) * 1000, 3),
            "peak_mem_mib": round(peak, 1), "memory": "peak CUDA allocated" if cuda else "peak RSS of the process",
            "weights_finite": finite, "compile": compiled, "warmup_s": round(warm, 1),
            "params_G": sum(p.numel() for p in nets[0].parameters()),
            "params_D": sum(p.numel() for p in nets[1].parameters())}
