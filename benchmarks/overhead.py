"""gantrain's cost over a bare PyTorch loop (the shard reader alone: benchmarks/reader.py).

1. Training step: the same DCGAN, batch, losses and Adam settings, once through gantrain's Trainer
   (phases, stats, grad norms, EMA, the shard stream) and once as a hand-written loop over images
   already in memory. Runs are interleaved (A B A B ...) so machine noise hits both alike; the figure
   is the median over rounds. Ratio = gantrain time / bare time (target <= 1.02).
   Measured twice: with both loops fed the same decoded batches from memory (the loop's own cost),
   and end to end, gantrain streaming from shards (data.workers, --workers) against the bare loop still
   fed from memory (what the data path costs a run on top).

   With --memory-cache-gb > 0 (data.memory_cache_gb) a third gantrain run, timed in the same rounds, first
   reads one epoch untimed, so that its timed steps take their batches from the decoded samples kept in memory.

    python benchmarks/overhead.py [--rounds 7] [--steps 20] [--channels 16] [--batch 64] [--workers 0]
                                  [--memory-cache-gb 0]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gantrain import config as config_mod
from gantrain import models
from gantrain.data.pack import pack
from gantrain.data.sources import open_source
from gantrain.data.stream import open_data, read_manifest
from gantrain.engines.single import SingleEngine
from gantrain.train.loop import Trainer, resolve, seed_everything


class InMemory:
    """Pre-decoded batches, for measuring the loop alone (stands in for Trainer.loader)."""

    def __init__(self, images: torch.Tensor, batch: int):
        self.images, self.batch, self.position = images, batch, 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.position
        self.position = (self.position + self.batch) % (len(self.images) - self.batch)
        return self.images[start:start + self.batch], torch.zeros(self.batch, dtype=torch.int64)

    def close(self) -> None:
        pass


def decode_png(blob: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(blob)) as image:
        array = np.array(image, dtype=np.uint8)
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


def image_blobs(manifest) -> list[bytes]:
    blobs = []
    for url, _ in manifest.shards:
        with tarfile.open(url) as tar:
            blobs += [tar.extractfile(m).read() for m in tar.getmembers()
                      if m.name.endswith("." + manifest.image_format)]
    return blobs


def bare_loop(spec: models.DataSpec, cfg: config_mod.Config, batches):
    """A hand-written DCGAN step: what a user would write without gantrain."""
    seed_everything(0, cfg.run.deterministic)
    G, D = models.build(cfg.model, spec)
    betas = tuple(cfg.optim.betas)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=betas)
    batch, z_dim = cfg.train.batch, cfg.model.z_dim

    def step() -> None:
        real = next(batches)[0].float() / 127.5 - 1
        with torch.no_grad():
            fake = G(torch.randn(batch, z_dim))
        G.requires_grad_(False)
        D.requires_grad_(True)
        loss = (F.softplus(-D(real)) + F.softplus(D(fake))).mean()
        opt_D.zero_grad(set_to_none=True)
        loss.backward()
        opt_D.step()
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss = F.softplus(-D(G(torch.randn(batch, z_dim)))).mean()
        opt_G.zero_grad(set_to_none=True)
        loss.backward()
        opt_G.step()

    return step


def time_steps(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def interleaved(steps_by_name: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each callable, all timed in the same rounds (A B C A B C ...)."""
    for _ in range(3):  # warm-up: allocator, worker start-up, first-iteration kernels
        for step in steps_by_name.values():
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            times[name].append(time_steps(step, steps))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_step(data: Path, args: argparse.Namespace) -> None:
    manifest = read_manifest(data)
    spec = models.DataSpec(manifest.resolution, manifest.channels, manifest.num_classes)
    images = torch.stack([decode_png(b) for b in image_blobs(manifest)])

    def config(memory_cache_gb: float) -> config_mod.Config:
        cfg = config_mod.from_dict({
            "data": {"path": str(data), "workers": args.workers, "memory_cache_gb": memory_cache_gb},
            "model": {"name": "dcgan", "z_dim": 64, "channels": args.channels},
            "train": {"batch": args.batch, "kimg": 1000, "ema_kimg": 2.0},
        })
        return resolve(cfg, manifest, 1)

    # name -> (data.memory_cache_gb, fed the bare loop's in-memory batches instead of reading the shards)
    variants = {"loop only": (0.0, True), f"end to end, {args.workers} workers": (0.0, False)}
    if args.memory_cache_gb:
        variants[f"end to end, {args.workers} workers, memory cache warm"] = (args.memory_cache_gb, False)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for i, (name, (cache_gb, in_memory)) in enumerate(variants.items()):
            cfg = config(cache_gb)
            trainer = Trainer(cfg, Path(tmp) / str(i), SingleEngine("cpu"), manifest=open_data(cfg.data))
            if in_memory:
                trainer.loader.close()
                trainer.loader = InMemory(images, args.batch)
            elif cache_gb:
                for _ in range(-(-manifest.num_images // args.batch) + args.workers):  # one epoch, untimed
                    next(trainer.loader)
            trainers[name] = trainer
        steps_by_name = {name: t.train_step for name, t in trainers.items()}
        steps_by_name["bare"] = bare_loop(spec, config(0.0), InMemory(images, args.batch))
        median = interleaved(steps_by_name, args.rounds, args.steps)
        for trainer in trainers.values():
            trainer.loader.close()
    bare = median.pop("bare")
    print(f"bare loop (fed decoded batches from memory)  {bare * 1000:7.2f} ms ({args.batch / bare:5.0f} img/s)")
    for name, seconds in median.items():
        print(f"gantrain, {name:<40} {seconds * 1000:7.2f} ms ({args.batch / seconds:5.0f} img/s)   "
              f"ratio {seconds / bare:.3f}  ({bare / seconds:.2f}x img/s)")
    print(f"      DCGAN channels={args.channels}, batch={args.batch}, {manifest.resolution}x{manifest.resolution}, "
          f"{torch.get_num_threads()} torch threads, median of {args.rounds} rounds x {args.steps} steps, "
          f"all interleaved; loop only: gantrain fed the same decoded batches (target ratio <= 1.02); "
          f"end to end: gantrain reads the shards (target >= 0.97x img/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="data workers for the gantrain side")
    parser.add_argument("--memory-cache-gb", type=float, default=0.0, help="data.memory_cache_gb (per worker)")
    parser.add_argument("--data", help="packed shards (default: pack mnist5k at 32x32 into a temp dir)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "mnist5k"
        if not args.data:
            pack(open_source("mnist5k"), data, 32, progress=False)
        bench_step(data, args)


if __name__ == "__main__":
    main()
