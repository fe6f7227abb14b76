"""Progressive growing: img/s per resolution and the cost of each stage transition (re-wrapping both
networks and carrying the optimizer state) relative to one training step at the new stage.

    python benchmarks/progressive.py [--kimg-per-phase 2] [key=value ...]
    torchrun --nproc-per-node 2 benchmarks/progressive.py engine.name=ddp        # the same under DDP

Uses configs/progan-cpu.yaml on the bundled MNIST-5k digits (packed to a temp dir), with shorter phases.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from gantrain import config as config_mod
from gantrain.data.pack import pack
from gantrain.data.sources import open_source
from gantrain.data.stream import read_manifest
from gantrain.engines import make_engine
from gantrain.train.loop import Trainer, resolve

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kimg-per-phase", type=float, default=2.0)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.getLogger("gantrain").setLevel(logging.WARNING)
    # Shared by the ranks of a torchrun launch (each has its own temp dir for the run itself).
    data = Path(tempfile.gettempdir()) / f"gantrain-bench-mnist5k-{args.resolution}"
    with tempfile.TemporaryDirectory() as tmp:
        k = args.kimg_per_phase
        overrides = [f"data.path={data}", "data.workers=0", f"progressive.stabilize_kimg={k}",
                     f"progressive.fade_kimg={k}", f"train.kimg={7 * k + k}", "log.progress=false",
                     *args.overrides]
        cfg = config_mod.load(ROOT / "configs/progan-cpu.yaml", overrides)
        engine = make_engine(cfg)
        if engine.is_main and not (data / "manifest.json").exists():
            pack(open_source("mnist5k"), data, args.resolution, progress=False)
        engine.any(False)  # the other ranks wait for the shards
        cfg = resolve(cfg, read_manifest(data), engine.world_size)
        trainer = Trainer(cfg, Path(tmp) / "run", engine)
        total = round(cfg.train.kimg * 1000)
        steps: dict[tuple[int, str], list[float]] = defaultdict(list)
        while trainer.nimg < total:
            before = len(trainer.transitions)
            start = time.perf_counter()
            trainer.train_step()
            seconds = time.perf_counter() - start
            if len(trainer.transitions) == before:  # steps that re-wrapped are counted separately
                steps[(trainer.stage.resolution, trainer.stage.phase)].append(seconds / trainer.stage.batch)
        trainer.loader.close()
        if not engine.is_main:
            engine.close()
            return
        print(f"engine {cfg.engine.name} x {engine.world_size}, ProGAN channels {cfg.model.channels} "
              f"(max {cfg.model.max_channels}), {k:g} kimg per phase")
        print(f"{'stage':<18}{'img/s':>8}{'steps':>7}")
        for (res, phase), per_image in steps.items():
            print(f"{res:>4}x{res:<4} {phase:<9}{1 / statistics.median(per_image):8.0f}{len(per_image):7d}")
        print(f"\n{'transition':<24}{'re-wrap s':>10}{'step s':>9}{'ratio':>7}")
        for t in trainer.transitions[1:]:
            phase = "fade" if t["fade"] else "stabilize"
            step = statistics.median(steps[(t["resolution"], phase)]) * cfg.progressive.batch.get(
                t["resolution"], cfg.train.batch)
            print(f"to {t['resolution']:>3}x{t['resolution']:<3} {phase:<10}{t['seconds']:>10.4f}{step:>9.4f}"
                  f"{t['seconds'] / step:>7.3f}")
        engine.close()


if __name__ == "__main__":
    main()
