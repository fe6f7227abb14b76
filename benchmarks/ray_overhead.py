"""Ray Train against torchrun: the same K steps of the quickstart DCGAN with 2 workers and the DDP engine.

Each launcher runs as a fresh `gantrain train` process (Ray: `--ray --workers 2`, which also starts a local
Ray instance; torchrun: `--nproc 2`), alternating, --rounds times. From each run's stats.jsonl: the
steady per-step time (median over ticks after the first) and the training time; fixed start-up cost =
wall time - training time (process start, imports, Ray start-up, worker placement, process group, data
loader start, final checkpoint). Ray documents parity with native DDP within 2.5 % per step.

    python benchmarks/ray_overhead.py [--steps 150] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gantrain.data.pack import pack
from gantrain.data.sources import open_source

ROOT = Path(__file__).resolve().parent.parent
BATCH = 64


def launch(kind: str, data: Path, run_dir: Path, steps: int) -> dict[str, float]:
    overrides = [f"data.path={data}", "engine.name=ddp", f"train.kimg={steps * BATCH / 1000}",
                 f"train.batch={BATCH}", f"log.tick_kimg={10 * BATCH / 1000}", "log.snapshot_kimg=100000",
                 "log.image_kimg=100000", "log.progress=false", "eval.metrics=[]", "data.workers=1"]
    extra = ["--ray", "--workers", "2"] if kind == "ray" else ["--nproc", "2"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "gantrain", "train", str(ROOT / "configs" / "quickstart.yaml"),
                             *overrides, "--run-dir", str(run_dir), *extra], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{result.stderr[-3000:]}")
    ticks = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    per_step = statistics.median(t["Timing/sec_per_kimg"] * BATCH / 1000 for t in ticks[1:])
    training = ticks[-1]["Timing/total_sec"]
    return {"wall": wall, "per_step": per_step, "training": training, "fixed": wall - training}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pack(open_source("mnist5k"), tmp / "data", 32, shard_size=500, progress=False)
        runs: dict[str, list[dict[str, float]]] = {"torchrun": [], "ray": []}
        for r in range(args.rounds):
            for kind in ("torchrun", "ray"):
                runs[kind].append(launch(kind, tmp / "data", tmp / f"{kind}-{r}", args.steps))
                m = runs[kind][-1]
                print(f"round {r} {kind:<8} wall {m['wall']:6.1f} s  training {m['training']:6.1f} s  "
                      f"fixed {m['fixed']:5.1f} s  per step {m['per_step'] * 1000:6.1f} ms", flush=True)
    med = {k: {f: statistics.median(m[f] for m in v) for f in ("wall", "per_step", "fixed")} for k, v in runs.items()}
    print(f"\n{args.steps} steps, batch {BATCH}, 2 workers, DDP (gloo), medians of {args.rounds} rounds")
    print(f"{'launcher':<10} {'wall s':>8} {'fixed start-up s':>17} {'per step ms':>12}")
    for kind in ("torchrun", "ray"):
        print(f"{kind:<10} {med[kind]['wall']:>8.1f} {med[kind]['fixed']:>17.1f} {med[kind]['per_step'] * 1000:>12.1f}")
    print(f"ray / torchrun per step: {med['ray']['per_step'] / med['torchrun']['per_step']:.3f}   "
          f"extra fixed cost under Ray: {med['ray']['fixed'] - med['torchrun']['fixed']:.1f} s")


if __name__ == "__main__":
    main()
