"""gantrain's cost over a bare PyTorch loop, and the shard reader's speed against a tight PIL loop.

1. Training step: the same DCGAN, batch, losses and Adam settings, once through gantrain's Trainer
   (phases, stats, grad norms, EMA, the shard stream) and once as a hand-written loop over images
   already in memory. Runs are interleaved (A B A B ...) so machine noise hits both alike; the figure
   is the median over rounds. Ratio = gantrain time / bare time (target <= 1.02).
2. Reader: samples/s of the webdataset shard reader (tar parse + PNG decode + label), one worker,
   against a loop that decodes the same PNG bytes with PIL straight from memory (target >= 0.9).

    python benchmarks/overhead.py [--rounds 7] [--steps 20] [--channels 16] [--batch 64]
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
from gantrain.data.stream import read_manifest, samples
from gantrain.engines.single import SingleEngine
from gantrain.train.loop import Trainer, resolve, seed_everything


def bare_loop(spec: models.DataSpec, cfg: config_mod.Config, images: torch.Tensor):
    """A hand-written DCGAN step: what a user would write without gantrain."""
    seed_everything(0, cfg.run.deterministic)
    G, D = models.build(cfg.model, spec)
    betas = tuple(cfg.optim.betas)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=betas)
    batch, z_dim = cfg.train.batch, cfg.model.z_dim
    position = 0

    def step() -> None:
        nonlocal position
        real = images[position:position + batch].float() / 127.5 - 1
        position = (position + batch) % (len(images) - batch)
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


def bench_step(data: Path, args: argparse.Namespace) -> None:
    manifest = read_manifest(data)
    cfg = config_mod.from_dict({
        "data": {"path": str(data), "workers": args.workers},
        "model": {"name": "dcgan", "z_dim": 64, "channels": args.channels},
        "train": {"batch": args.batch, "kimg": 1000, "ema_kimg": 2.0},
    })
    cfg = resolve(cfg, manifest, 1)
    spec = models.DataSpec(manifest.resolution, manifest.channels, manifest.num_classes)
    images = torch.stack([img for img, *_ in samples(manifest, seed=0, shuffle=False, infinite=False)])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), SingleEngine("cpu"), manifest=manifest)
        bare = bare_loop(spec, cfg, images)
        for _ in range(3):  # warm-up: allocator, worker start-up, first-iteration kernels
            trainer.train_step()
            bare()
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(time_steps(trainer.train_step, args.steps))
            theirs.append(time_steps(bare, args.steps))
        trainer.loader.close()
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"step  gantrain {a * 1000:7.2f} ms ({args.batch / a:6.0f} img/s)   bare {b * 1000:7.2f} ms "
          f"({args.batch / b:6.0f} img/s)   ratio {a / b:.3f}  (target <= 1.02; workers={args.workers}, "
          f"channels={args.channels}, batch={args.batch}, {args.rounds} rounds x {args.steps} steps)")


def bench_reader(data: Path, rounds: int) -> None:
    manifest = read_manifest(data)
    blobs = []
    for url, _ in manifest.shards:
        with tarfile.open(url) as tar:
            blobs += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]

    def pil_loop() -> int:
        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as image:
                torch.from_numpy(np.asarray(image.convert("L"), dtype=np.uint8)[None].copy())
        return len(blobs)

    def reader() -> int:
        return sum(1 for _ in samples(manifest, seed=0, shuffle=True, infinite=False))

    ours, theirs = [], []
    for _ in range(rounds):
        for fn, out in ((reader, ours), (pil_loop, theirs)):
            start = time.perf_counter()
            n = fn()
            out.append(n / (time.perf_counter() - start))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"read  shard reader {a:8.0f} img/s   PIL loop over the same bytes {b:8.0f} img/s   ratio {a / b:.3f}  "
          f"(target >= 0.9; one worker, {manifest.num_images} images {manifest.resolution}x{manifest.resolution})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="data workers for the gantrain side")
    parser.add_argument("--data", help="packed shards (default: pack mnist5k at 32x32 into a temp dir)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "mnist5k"
        if not args.data:
            pack(open_source("mnist5k"), data, 32, progress=False)
        bench_reader(data, args.rounds)
        bench_step(data, args)


if __name__ == "__main__":
    main()
