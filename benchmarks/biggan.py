"""BigGAN training speed: img/s of full training steps and peak memory.

A "step" is what the loop runs per global batch: a D step every step, a G step (with the orthogonal penalty)
every d_steps steps, EMA; through gantrain's Trainer (gantrain.train.bench), fed decoded batches from
memory, each setting in its own process, 2 d_steps-cycles of warm-up then --steps timed steps.

On CPU: the cpu preset (configs/biggan-cpu.yaml), and 64x64 / 128x128 at reduced width. On a GPU the
paper's networks are added: 128x128, ch 96, 1000 classes, with the largest micro-batch of 256, 128, 64,
32 that fits, in fp32 and bf16; with 2 or more GPUs also per-device vs synchronized batch norm on 2 ranks
(`--syncbn`). Published anchor: BigGAN-PyTorch reports about 15 days to 150k iterations at batch 2048 on 8
V100s in fp32, i.e. 150,000 x 2048 / 1,296,000 s = 237 img/s (30 img/s per V100).

    python benchmarks/biggan.py [--steps 8] [--precisions fp32,bf16] [--only NAME] [--syncbn]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# name -> (config, resolution, batch, overrides)
CPU_SETTINGS = {
    "cpu-preset-32": ("configs/biggan-cpu.yaml", 32, 64, []),
    "narrow-64": ("configs/biggan-cpu.yaml", 64, 16, ["model.z_dim=80", "model.attention=[32]"]),
    "narrow-128": ("configs/biggan-cpu.yaml", 128, 8, ["model.z_dim=120", "model.channels=8",
                                                       "model.attention=[64]"]),
}
GPU_SETTINGS = {"paper-128-ch96": ("configs/biggan-imagenet128.yaml", 128, 256, [])}
GPU_BATCHES = (256, 128, 64, 32)
ANCHOR_IMG_PER_SEC = 150_000 * 2048 / (15 * 86400)


def _data(root: Path, resolution: int, classes: int) -> Path:
    """A packed set of random images in CLASSES classes: its manifest gives the trainer resolution, channels
    and classes (the images come from memory)."""
    import numpy as np

    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    out = root / f"random-{resolution}-{classes}"
    if not (out / "manifest.json").exists():
        rng = np.random.default_rng(0)
        npz = root / f"random-{resolution}-{classes}.npz"
        np.savez(npz, images=rng.integers(0, 256, (classes, resolution, resolution, 3), dtype=np.uint8),
                 labels=np.arange(classes))
        pack(open_source(str(npz)), out, resolution, shard_size=classes, progress=False)
    return out


def one(name: str, precision: str, steps: int, batch: int | None, data_root: Path, syncbn: bool | None) -> dict:
    from gantrain import config as config_mod
    from gantrain.data.stream import read_manifest
    from gantrain.engines import make_engine
    from gantrain.train.bench import time_steps
    from gantrain.train.loop import resolve

    config, resolution, default_batch, overrides = {**CPU_SETTINGS, **GPU_SETTINGS}[name]
    batch = batch or default_batch
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = _data(data_root, resolution, 1000 if name in GPU_SETTINGS else 10)
    engine = ["engine.name=ddp", f"engine.sync_batchnorm={str(syncbn).lower()}"] if syncbn is not None else []
    cfg = config_mod.load(REPO / config, [
        f"data.path={data}", "data.workers=0", "eval.metrics=[]", f"train.batch={batch * world}",
        "train.micro_batch=null", f"engine.precision={precision}", f"engine.device={device}", "log.progress=false",
        *engine, *overrides])
    manifest = read_manifest(data)
    cfg = resolve(cfg, manifest, world)
    warmup = 2 * cfg.train.d_steps
    out = time_steps(cfg, manifest, device, precision, warmup, steps,
                     engine=make_engine(cfg) if syncbn is not None else None)
    return {"name": name, "world": world, "syncbn": syncbn, **out}


def _run(args: list[str], nproc: int = 1) -> dict | str:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"] if nproc > 1 \
        else [sys.executable]
    out = subprocess.run([*launcher, __file__, *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
        oom = any("out of memory" in line.lower() for line in lines)
        return "out of memory" if oom else lines[-1][:160]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(r: dict, label: str) -> str:
    return (f"{label:>22} {r['precision']:>5} {r['resolution']:>5} {r['batch']:>5} {r['params_G']:>11,} "
            f"{r['params_D']:>11,} {r['img_per_sec']:>8.1f} {r['sec_per_kimg']:>8.1f} {r['peak_mem_mib']:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--only", help="one setting by name")
    parser.add_argument("--syncbn", action="store_true", help="only per-device vs synchronized BN on 2 GPUs")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-syncbn", choices=("true", "false"), help=argparse.SUPPRESS)
    parser.add_argument("--data-root", default=str(Path(tempfile.gettempdir()) / "gantrain-bench-biggan"))
    args = parser.parse_args()
    Path(args.data_root).mkdir(parents=True, exist_ok=True)
    if args.one:
        syncbn = None if args.ddp_syncbn is None else args.ddp_syncbn == "true"
        r = one(args.one[0], args.one[1], args.steps, args.batch, Path(args.data_root), syncbn)
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps(r))
        return
    common = ["--steps", str(args.steps), "--data-root", args.data_root]
    header = (f"{'setting':>22} {'prec':>5} {'res':>5} {'batch':>5} {'G params':>11} {'D params':>11} "
              f"{'img/s':>8} {'s/kimg':>8} {'peak MiB':>9}")
    print(f"BigGAN full training steps ({args.steps} after 2 d_steps-cycles of warm-up), "
          f"{torch.get_num_threads()} torch threads; anchor: {ANCHOR_IMG_PER_SEC:.0f} img/s on 8 V100s (fp32)")
    print(header)
    if args.syncbn:
        if torch.cuda.device_count() < 2:
            print(f"per-device vs synchronized BN needs 2 GPUs; this machine has {torch.cuda.device_count()}")
            return
        for precision in args.precisions.split(","):
            for syncbn in ("false", "true"):
                r = _run(["--one", "paper-128-ch96", precision, "--batch", "64", "--ddp-syncbn", syncbn, *common], 2)
                label = f"2 ranks, {'sync' if syncbn == 'true' else 'per-device'} BN"
                print(_row(r, label) if isinstance(r, dict) else f"{label:>22} {precision:>5}  failed: {r}")
        return
    names = [args.only] if args.only else [*CPU_SETTINGS, *(GPU_SETTINGS if torch.cuda.is_available() else {})]
    for name in names:
        for precision in args.precisions.split(","):
            batches = GPU_BATCHES if name in GPU_SETTINGS else (None,)
            for batch in batches:  # the largest micro-batch that fits
                r = _run(["--one", name, precision, *(["--batch", str(batch)] if batch else []), *common])
                if r != "out of memory":
                    break
            print(_row(r, name) if isinstance(r, dict) else f"{name:>22} {precision:>5}  failed: {r}")
    print("memory: peak CUDA allocated on a GPU, peak RSS of the process on CPU; img/s counts the global batch")


if __name__ == "__main__":
    main()
