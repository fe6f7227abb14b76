"""What a run reports: TensorBoard, a plain-text log, stats.jsonl and a progress bar (rank 0 only).

Scalars are accumulated on-device during a tick and reduced across ranks once per tick, so logging
costs one small all-reduce per tick rather than a host sync per step.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from gantrain.engines import Engine
from gantrain.sampling import readable_scale, upscale

log = logging.getLogger("gantrain")


def json_line(record: dict[str, Any]) -> str:
    """One line of strict JSON: a non-finite figure (a diverging loss) becomes null, not NaN/Infinity."""
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()},
                      allow_nan=False) + "\n"


class Stats:
    """Running means of named scalar tensors over one tick."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float().mean()
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def reduce(self, engine: Engine) -> dict[str, float]:
        """Means over the tick and over ranks; resets the accumulators."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        means = torch.stack([self.sums[n] / self.counts[n] for n in names])
        means = engine.all_reduce_mean(means).tolist()
        self.sums.clear()
        self.counts.clear()
        return dict(zip(names, means))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def setup_logging(run_dir: Path | None, quiet_console: bool) -> None:
    """INFO and up to RUN_DIR/log.txt; on the console only warnings while a progress bar is showing."""
    logger = logging.getLogger("gantrain")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if quiet_console else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if run_dir is not None:
        file = logging.FileHandler(run_dir / "log.txt")
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file)


class Monitor:
    def __init__(self, run_dir: Path, config: dict[str, Any], *, enabled: bool, total_nimg: int, start_nimg: int,
                 progress: bool, hparams_config: dict[str, Any] | None = None):
        """CONFIG goes to TensorBoard's text tab in full; HPARAMS_CONFIG (default CONFIG) to the HParams table."""
        self.enabled = enabled
        self.run_dir = run_dir
        self.start_time = self.tick_time = time.perf_counter()
        self.tick_nimg = start_nimg
        self.tick = 0
        self.writer = self.bar = None
        if not enabled:
            return
        # purge_step drops events a previous, interrupted attempt wrote after the resumed checkpoint.
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_nimg if start_nimg else None)
        exp, ssi, sei = hparams(_flat(config if hparams_config is None else hparams_config), {"Loss/G": float("nan")})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", start_nimg)
        self.bar = tqdm(total=total_nimg / 1000, initial=start_nimg / 1000, unit="kimg", disable=not progress,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")

    def advance(self, images: int) -> None:
        if self.bar is not None:  # the last step may pass train.kimg by less than a batch
            self.bar.update(min(images / 1000, self.bar.total - self.bar.n))

    def report(self, nimg: int, scalars: dict[str, float], device: torch.device) -> dict[str, float]:
        """Close a tick: timing figures plus SCALARS to TensorBoard, log.txt and stats.jsonl."""
        now = time.perf_counter()
        seconds = now - self.tick_time
        images = nimg - self.tick_nimg
        scalars = dict(scalars)
        scalars["Progress/kimg"] = nimg / 1000
        scalars["Timing/img_per_sec"] = images / max(seconds, 1e-9)
        scalars["Timing/sec_per_kimg"] = seconds / max(images / 1000, 1e-9)
        scalars["Timing/total_sec"] = now - self.start_time
        scalars["Resources/peak_mem_mb"] = peak_memory_mb(device)
        self.tick += 1
        self.tick_time, self.tick_nimg = now, nimg
        if not self.enabled:
            return scalars
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, nimg)
        self.writer.flush()
        with open(self.run_dir / "stats.jsonl", "a") as f:
            f.write(json_line({"nimg": nimg, **scalars}))
        shown = ("Loss/D", "Loss/G", "Loss/R1", "Loss/PL", "Timing/img_per_sec", "Timing/sec_per_kimg")
        fields = "  ".join(f"{k.split('/')[-1]} {scalars[k]:.4g}" for k in shown if k in scalars)
        message = f"tick {self.tick:<4d} kimg {nimg / 1000:<8.2f} {fields}"
        if self.bar is not None:
            postfix = f"{scalars['Timing/img_per_sec']:.0f} img/s"
            if "Progress/resolution" in scalars:  # a growing model: where in the schedule it is
                res = int(scalars["Progress/resolution"])
                postfix += f"  {res}x{res} alpha {scalars['Progress/alpha']:.2f}"
            self.bar.set_postfix_str(postfix, refresh=False)
        log.info(message)
        return scalars

    def metrics(self, nimg: int, figures: dict[str, float]) -> None:
        """An evaluation's figures: TensorBoard Metrics/*, metrics.jsonl, one log line. Its time is taken
        out of the tick so img/s stays a training figure."""
        seconds = figures["seconds"]
        self.tick_time += seconds
        if not self.enabled:
            return
        values = {f"Metrics/{k}": v for k, v in figures.items() if k not in ("seconds", "num_real", "num_fake")}
        values["Timing/eval_sec"] = seconds
        for name, value in values.items():
            self.writer.add_scalar(name, value, nimg)
        self.writer.flush()
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json_line({"nimg": nimg, **values, "num_real": figures["num_real"],
                               "num_fake": figures["num_fake"]}))
        shown = "  ".join(f"{k[8:]} {v:.4g}" for k, v in values.items() if k.startswith("Metrics/"))
        log.info("eval kimg %.2f  %s  (%.1f s)", nimg / 1000, shown, seconds)

    def image(self, tag: str, grid: torch.Tensor, nimg: int, scale: int | None = None) -> None:
        """GRID to TensorBoard enlarged SCALE times (nearest); None: to about 512 px, readable as shown."""
        if self.enabled:
            self.writer.add_image(tag, upscale(grid, readable_scale(grid) if scale is None else scale), nimg)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
