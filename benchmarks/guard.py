"""What the non-finite guard costs a training step (gantrain/train/guard.py).

Every step the guard copies the parameters, buffers and optimizer state of G and D (keep), checks them
for inf/NaN after the step (finite: one device sync) and, rarely, puts the copy back (revert). This script
times Trainer.train_step with the guard as shipped against the same Trainer whose guard does nothing
(keep and finite replaced by no-ops on that one instance), interleaved (A B A B ...) so machine noise hits
both alike, fed the same decoded batches from memory; the figure is the median over rounds. Ratio =
guarded / unguarded (target <= 1.02 at realistic widths). Also printed: the size of the state it copies.

    python benchmarks/guard.py [--rounds 7] [--steps 20] [--channels 16,64] [--batch 64] [--components-only]

--components-only skips the step timing and prints what the guard's two parts cost on the state of each
width after three steps: keep (the copy) and finite (the check), against isfinite().all() per tensor.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gantrain import config as config_mod
from gantrain.data.pack import pack
from gantrain.data.sources import open_source
from gantrain.data.stream import read_manifest
from gantrain.engines.single import SingleEngine
from gantrain.train.loop import Trainer, resolve

from overhead import InMemory, decode_png, image_blobs, interleaved  # noqa: E402 (sibling benchmark)


def trainer(cfg: config_mod.Config, manifest, images: torch.Tensor, run_dir: Path, guarded: bool) -> Trainer:
    t = Trainer(cfg, run_dir, SingleEngine("cpu"), manifest=manifest)
    t.loader.close()
    t.loader = InMemory(images, cfg.train.batch)
    if not guarded:
        t.guard.keep = lambda nets: None
        t.guard.finite = lambda nets: True
    return t


def ms_per_call(fn, n: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def components(t: Trainer) -> str:
    for _ in range(3):  # Adam's moments exist from the first step on
        t.train_step()
    nets = [t.G, t.D]
    floats = [x for net in nets for x in net.state_tensors() if x.is_floating_point()]
    keep = ms_per_call(lambda: t.guard.keep(nets))
    check = ms_per_call(lambda: t.guard.finite(nets))
    mask = ms_per_call(lambda: bool(torch.stack([torch.isfinite(x).all() for x in floats]).all()))
    return (f"      state {sum(x.numel() for x in floats) / 1e6:.1f} M floats in {len(floats)} tensors: keep "
            f"{keep:.1f} ms, finite {check:.1f} ms (isfinite().all() per tensor: {mask:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--channels", default="16,64", help="DCGAN widths, comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--components-only", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mnist5k"
        pack(open_source("mnist5k"), data, 32, progress=False)
        manifest = read_manifest(data)
        images = torch.stack([decode_png(b) for b in image_blobs(manifest)])
        for channels in (int(c) for c in args.channels.split(",")):
            cfg = resolve(config_mod.from_dict({
                "data": {"path": str(data), "workers": 0},
                "model": {"name": "dcgan", "z_dim": 64, "channels": channels},
                "train": {"batch": args.batch, "kimg": 1000, "ema_kimg": 2.0},
            }), manifest, 1)
            guarded = trainer(cfg, manifest, images, Path(tmp) / f"g{channels}", True)
            if args.components_only:
                print(f"DCGAN channels={channels}\n{components(guarded)}")
                continue
            bare = trainer(cfg, manifest, images, Path(tmp) / f"u{channels}", False)
            a, b = interleaved(guarded.train_step, bare.train_step, args.rounds, args.steps)
            guarded.train_step()
            copied = sum(t.numel() * t.element_size() for backup in guarded.guard.backup for t in backup)
            params = sum(p.numel() for net in (guarded.G_model, guarded.D_model) for p in net.parameters())
            print(f"DCGAN channels={channels:<3d} ({params / 1e6:.2f} M params in G+D, {copied / 2**20:.1f} MiB "
                  f"copied per step)\n      guarded {a * 1000:7.2f} ms ({args.batch / a:5.0f} img/s)   unguarded "
                  f"{b * 1000:7.2f} ms ({args.batch / b:5.0f} img/s)   ratio {a / b:.3f}  (target <= 1.02)")
    if not args.components_only:
        print(f"      batch={args.batch}, 32x32 MNIST, {torch.get_num_threads()} torch threads, median of "
              f"{args.rounds} rounds x {args.steps} steps, CPU")


if __name__ == "__main__":
    main()
