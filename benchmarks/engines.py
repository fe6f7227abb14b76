"""Engines side by side: optimizer-state bytes and peak memory per rank, and step time.

A DCGAN of about 22M parameters (G + D) trains a few steps on packed MNIST-5k under: single (1 process),
ddp, ZeRO-1 and ZeRO-2 (2 ranks each, gloo on CPU unless CUDA is there), all at the same global batch.
Each variant runs in its own torchrun launch; rank 0 prints one JSON line that this script collects.
Target: ZeRO-2 optimizer state per rank <= 1/2 of DDP's + 5%.

    python benchmarks/engines.py [--steps 6] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL = {"name": "dcgan", "z_dim": 100, "channels": 128, "max_channels": 1024, "norm": "none"}


def optimizer_state_bytes(net) -> tuple[int, int]:
    """(Adam moment bytes, fp32 master-copy bytes) this rank holds; ZeRO keeps only its partition of
    both, and keeps the master copy even when training in fp32."""
    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t) and t.dim() > 0)

    zero = getattr(getattr(net, "engine", None), "optimizer", None)
    if zero is not None and hasattr(zero, "single_partition_of_fp32_groups"):
        return size(t for s in zero.optimizer.state.values() for t in s.values()), \
            size(zero.single_partition_of_fp32_groups)
    opt = zero if zero is not None else net.optimizer
    return size(t for s in opt.state.values() for t in s.values()), 0


def worker(args: argparse.Namespace) -> None:
    from gantrain import config as config_mod
    from gantrain.data.stream import read_manifest
    from gantrain.engines import make_engine
    from gantrain.train.loop import Trainer, resolve

    cfg = config_mod.from_dict({
        "data": {"path": args.data, "workers": 0}, "model": MODEL,
        "engine": {"name": args.engine, "zero_stage": args.zero_stage, "device": "auto"},
        "train": {"batch": args.batch, "kimg": 1000},
        "log": {"progress": False},
    })
    engine = make_engine(cfg)
    cfg = resolve(cfg, read_manifest(args.data), engine.world_size)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), engine)
        trainer.train_step()  # warm-up; optimizer state exists from here on
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        params = sum(p.numel() for net in (trainer.G, trainer.D) for p in net.raw.parameters())
        sizes = [optimizer_state_bytes(net) for net in (trainer.G, trainer.D)]
        moments, master = sum(m for m, _ in sizes), sum(c for _, c in sizes)
        trainer.loader.close()
    if engine.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(engine.device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if engine.is_main:
        result = {"params": params, "opt_state_mb": moments / 2**20, "master_mb": master / 2**20, "peak_mb": peak,
                  "step_s": statistics.median(times)}
        print("RESULT " + json.dumps(result), flush=True)
    engine.close()


def launch(data: str, engine: str, nproc: int, args: argparse.Namespace, zero_stage: int = 0) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, "--worker", "--data", data, "--engine", engine, "--zero-stage", str(zero_stage),
               "--steps", str(args.steps), "--batch", str(args.batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(max((os.cpu_count() or 1) // nproc, 1)))
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{engine} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data")
    parser.add_argument("--engine", default="single")
    parser.add_argument("--zero-stage", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(Path(tmp) / "mnist5k")
        if not args.data:
            pack(open_source("mnist5k"), data, 32, shard_size=500, progress=False)
        runs = {"single (1 process)": launch(data, "single", 1, args),
                "ddp (2 ranks)": launch(data, "ddp", 2, args),
                "zero-1 (2 ranks)": launch(data, "deepspeed", 2, args, 1),
                "zero-2 (2 ranks)": launch(data, "deepspeed", 2, args, 2)}
    base, ddp = runs["single (1 process)"], runs["ddp (2 ranks)"]
    print(f"DCGAN {base['params'] / 1e6:.1f}M parameters, global batch {args.batch}, median of {args.steps} steps, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"{'engine':<20}{'Adam state/rank MB':>19}{'vs ddp':>8}{'+fp32 copy MB':>15}{'peak/rank MB':>14}"
          f"{'step s':>9}{'vs single':>11}")
    for name, r in runs.items():
        print(f"{name:<20}{r['opt_state_mb']:>19.1f}{r['opt_state_mb'] / ddp['opt_state_mb']:>8.2f}"
              f"{r['master_mb']:>15.1f}{r['peak_mb']:>14.0f}{r['step_s']:>9.3f}{r['step_s'] / base['step_s']:>11.2f}")
    ratio = runs["zero-2 (2 ranks)"]["opt_state_mb"] / ddp["opt_state_mb"]
    print(f"ZeRO-2 optimizer state per rank = {ratio:.3f} x DDP's (target <= 0.55)")


if __name__ == "__main__":
    main()
