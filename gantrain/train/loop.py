"""The training loop: one for every model and every engine.

Each step takes one global batch of real images and runs the phases whose interval has come round:
D main (adversarial loss, R1 too when it is not lazy), D reg (lazy R1, every r1_interval D steps, scaled
by the interval), G main (every d_steps D steps). A phase accumulates gradients over micro-batches and
then takes one optimizer step. After the phases G_ema is updated. Training length and every interval
are counted in images shown to D, so changing the batch size never changes what "10 kimg" means.

All training randomness (latents, fake labels) comes from one generator whose state is checkpointed;
snapshots and grids use their own fixed seeds. So resuming from a checkpoint, or extending a finished
run with a larger train.kimg, continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gantrain import config as config_mod
from gantrain import losses, models
from gantrain.atomic import atomic_write
from gantrain.config import Config, ConfigError
from gantrain.data.stream import Manifest, StreamLoader, read_manifest, samples
from gantrain.engines import Engine, Net, make_engine
from gantrain.monitor import Monitor, Stats, setup_logging
from gantrain.sampling import generate, latents, make_grid, save_png, to_uint8
from gantrain.train import checkpoint
from gantrain.train.ema import ema_beta, update_ema

log = logging.getLogger("gantrain")
CHECKPOINT_FORMAT = "gantrain-checkpoint/1"
GRID_SEED = 123  # fixed latents for the progress grids, independent of run.seed


@dataclass
class Phase:
    name: str
    net: Net
    interval: int  # in D steps for D phases, in G steps for G phases
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def resolve(cfg: Config, manifest: Manifest, world_size: int) -> Config:
    """Fill in what the config leaves to the data and the world size; refuse impossible combinations."""
    resolution = cfg.model.resolution or manifest.resolution
    if resolution > manifest.resolution:
        raise ConfigError("model.resolution", f"{resolution} exceeds the data's {manifest.resolution} "
                          f"({manifest.root}); repack at a higher --resolution")
    if cfg.model.conditional and manifest.num_classes < 2:
        raise ConfigError("model.conditional", f"the data in {manifest.root} has only one class")
    micro, _ = cfg.train.accumulation(world_size)
    return cfg.replace(model=dataclasses.replace(cfg.model, resolution=resolution),
                       train=dataclasses.replace(cfg.train, micro_batch=micro))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, engine: Engine, state: dict[str, Any] | None = None,
                 manifest: Manifest | None = None):
        self.cfg, self.run_dir, self.engine = cfg, run_dir, engine
        self.manifest = manifest or read_manifest(cfg.data.path)
        self.device = engine.device
        self.micro, self.accum = cfg.train.accumulation(engine.world_size)
        self.spec = models.DataSpec(cfg.model.resolution, self.manifest.channels, self.manifest.num_classes)

        seed_everything(cfg.run.seed, cfg.run.deterministic)  # same initial weights on every rank
        G, D = models.build(cfg.model, self.spec)
        self.G_ema = copy.deepcopy(G).to(self.device).eval().requires_grad_(False)
        o = cfg.optim
        self.lazy_r1 = cfg.loss.r1_gamma > 0 and cfg.loss.r1_interval > 1
        # Lazy regularization: the reg phase runs every k steps, so lr and betas are scaled to keep the
        # optimizer's effective time constants (StyleGAN2, appendix B).
        ratio = cfg.loss.r1_interval / (cfg.loss.r1_interval + 1) if self.lazy_r1 else 1.0
        lr_scale = o.lr_scale(cfg.train.batch)
        self.G = engine.setup(G, lambda params: torch.optim.Adam(params, lr=o.g_lr * lr_scale,
                                                                 betas=tuple(o.betas), eps=o.eps))
        self.D = engine.setup(D, lambda params: torch.optim.Adam(
            params, lr=o.d_lr * lr_scale * ratio, betas=tuple(b ** ratio for b in o.betas), eps=o.eps))

        self.phases = [Phase("Dmain", self.D, 1, self._d_main)]
        if self.lazy_r1:
            self.phases.append(Phase("Dreg", self.D, cfg.loss.r1_interval, self._d_reg))
        self.phases.append(Phase("Gmain", self.G, 1, self._g_main))

        self.nimg = self.step = self.g_step = 0
        self.elapsed = 0.0
        # One latent generator, identical on every rank: each step draws the whole global batch and a
        # rank takes its slice, so training randomness does not depend on the world size.
        self.gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.run.seed, 1]).generate_state(1)[0]))
        self.stats = Stats()
        data_state = None
        if state is not None:
            self._restore(state)
            ranks = state["data"]
            # Another world size: the loader sees a foreign layout and restarts at the next epoch (logged).
            data_state = ranks[engine.rank] if len(ranks) == engine.world_size else ranks[0]
        self.loader = StreamLoader(self.manifest, batch_size=self.micro, seed=cfg.run.seed,
                                   shuffle=cfg.data.shuffle, rank=engine.rank, world_size=engine.world_size,
                                   num_workers=cfg.data.workers, state=data_state, sampling=cfg.data.sampling,
                                   pin_memory=self.device.type == "cuda")
        self._stop_signal: int | None = None

    # ---- phases -----------------------------------------------------------------------------------
    # Each loss runs under the engine's autocast. The network being trained is called through
    # `.module` (the engine's wrapper, which reduces gradients); the frozen one through `.raw`, so no
    # gradient of it is computed or synchronized. Logits are cast to fp32 before any reduction.
    def _d_main(self, real, real_c, z, c) -> torch.Tensor:
        with torch.no_grad():
            fake = self.G.raw(z, c)
        r1_now = self.cfg.loss.r1_gamma > 0 and not self.lazy_r1
        if r1_now:
            real = real.detach().requires_grad_(True)
        real_logits = self.D.module(real, real_c).float()
        fake_logits = self.D.module(fake, c).float()
        loss = losses.d_logistic_loss(real_logits, fake_logits).mean()
        self.stats.add("Loss/D", loss)
        self.stats.add("Logits/real", real_logits)
        self.stats.add("Logits/fake", fake_logits)
        if r1_now:
            penalty = losses.r1_penalty(real_logits, real, self.D.loss_scale())
            self.stats.add("Loss/R1", penalty)
            loss = loss + penalty.mean() * (self.cfg.loss.r1_gamma / 2)
        return loss

    def _d_reg(self, real, real_c, z, c) -> torch.Tensor:
        real = real.detach().requires_grad_(True)
        logits = self.D.module(real, real_c).float()
        penalty = losses.r1_penalty(logits, real, self.D.loss_scale())
        self.stats.add("Loss/R1", penalty)
        # logits * 0: the last layer's bias has no part in the input gradient, and a parameter outside
        # the graph would leave a data-parallel gradient reduction waiting for it.
        return penalty.mean() * (self.cfg.loss.r1_gamma / 2 * self.cfg.loss.r1_interval) + logits.mean() * 0

    def _g_main(self, real, real_c, z, c) -> torch.Tensor:
        loss = losses.g_nonsaturating_loss(self.D.raw(self.G.module(z, c), c).float()).mean()
        self.stats.add("Loss/G", loss)
        return loss

    def _latents(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
        """This rank's slice of latents (and fake labels) drawn for the whole global batch, split into
        micro-batches: accumulation and data parallelism see exactly what one large batch would."""
        batch, per_rank = self.cfg.train.batch, self.micro * self.accum
        mine = slice(self.engine.rank * per_rank, (self.engine.rank + 1) * per_rank)
        z = torch.randn(batch, self.G.raw.z_dim, generator=self.gen)[mine].to(self.device)
        if not self.G.raw.num_classes:
            return z.split(self.micro), (None,) * self.accum
        c = torch.randint(self.G.raw.num_classes, (batch,), generator=self.gen)[mine].to(self.device)
        return z.split(self.micro), c.split(self.micro)

    def _run_phase(self, phase: Phase, reals: list[torch.Tensor], labels: list[torch.Tensor]) -> bool:
        for net in (self.G, self.D):  # a frozen D in the G phase keeps G's gradients out of D
            net.raw.requires_grad_(net is phase.net)
        zs, cs = self._latents()
        for i in range(self.accum):
            sync = contextlib.nullcontext() if i == self.accum - 1 else phase.net.no_sync()
            with sync:
                with self.engine.autocast():
                    loss = phase.loss(reals[i], labels[i], zs[i], cs[i])
                phase.net.backward(loss / self.accum)
        applied, norm = phase.net.step()
        self.stats.add(f"GradNorm/{phase.name}", norm)
        self.stats.add(f"Skipped/{phase.name}", torch.tensor(0.0 if applied else 1.0))
        return applied

    def _real_batch(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        reals, labels = [], []
        for _ in range(self.accum):
            images, c = next(self.loader)
            x = images.to(self.device, non_blocking=True).to(torch.float32) / 127.5 - 1
            if x.shape[-1] != self.spec.resolution:  # shards packed larger than the model: box filter
                x = F.avg_pool2d(x, x.shape[-1] // self.spec.resolution)
            reals.append(x)
            labels.append(c.to(self.device, non_blocking=True))
        return reals, labels

    def train_step(self) -> None:
        reals, labels = self._real_batch()
        g_applied = True
        for phase in self.phases:
            is_g = phase.net is self.G
            if is_g and (self.step + 1) % self.cfg.train.d_steps:
                continue
            if (self.g_step if is_g else self.step) % phase.interval:
                continue
            applied = self._run_phase(phase, reals, labels)
            g_applied = g_applied and (applied or not is_g)
        if (self.step + 1) % self.cfg.train.d_steps == 0:
            self.g_step += 1
        batch = self.cfg.train.batch
        if g_applied:  # a G step skipped for fp16 overflow leaves G_ema alone too
            update_ema(self.G_ema, self.G.raw, ema_beta(batch, self.nimg, self.cfg.train.ema_kimg,
                                                        self.cfg.train.ema_rampup))
        self.nimg += batch
        self.step += 1

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "spec": dataclasses.asdict(self.spec),
            "counters": {"nimg": self.nimg, "step": self.step, "g_step": self.g_step, "elapsed": self.elapsed},
            "G": self.G.state_dict(),  # weights, optimizer and (fp16) loss scaler of each network
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "rng": {
                "latents": self.gen.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                          "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
                "python": random.getstate(),
            },
            "data": self.engine.gather(self.loader.state_dict()),  # one cursor per rank
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        counters = state["counters"]
        self.nimg, self.step, self.g_step = counters["nimg"], counters["step"], counters["g_step"]
        self.elapsed = counters["elapsed"]
        rng = state["rng"]
        self.gen.set_state(rng["latents"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached"]))
        random.setstate(rng["python"])

    def snapshot(self) -> Path | None:
        """Collective (every rank contributes its data cursor); rank 0 writes."""
        state = self.state_dict()
        if not self.engine.is_main:
            return None
        meta = {"config": self.cfg.to_dict(), "spec": dataclasses.asdict(self.spec), "nimg": self.nimg}
        path = checkpoint.save(self.run_dir, state, self.nimg, self.cfg.log.keep,
                               self.G_ema.state_dict(), meta)
        log.info("checkpoint %s", path)
        return path

    # ---- side effects -----------------------------------------------------------------------------
    def _grid(self, monitor: Monitor) -> None:
        if not self.engine.is_main:
            return
        g = self.cfg.log.grid
        z, c = latents(g * g, self.G_ema, GRID_SEED, rows=g, device=self.device)
        grid = make_grid(to_uint8(generate(self.G_ema, z, c)), g)
        save_png(grid, self.run_dir / f"fakes-{self.nimg:010d}.png")
        monitor.image("fakes", grid, self.nimg)

    def _reals_grid(self, monitor: Monitor) -> None:
        """Reals grid from a separate, unshuffled read: the training stream must not be consumed."""
        if not self.engine.is_main:
            return
        g = self.cfg.log.grid
        stream = samples(self.manifest, seed=0, shuffle=False, infinite=False)
        images = torch.stack([image for image, *_ in itertools.islice(stream, g * g)])
        if images.shape[-1] != self.spec.resolution:
            factor = images.shape[-1] // self.spec.resolution
            images = F.avg_pool2d(images.float(), factor).round().to(torch.uint8)
        grid = make_grid(images, g)
        save_png(grid, self.run_dir / "reals.png")
        monitor.image("reals", grid, self.nimg)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """First SIGTERM/SIGINT: finish the step, checkpoint, stop. A second SIGINT aborts at once."""
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_signal = signum

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        total = round(cfg.train.kimg * 1000)
        monitor = Monitor(self.run_dir, cfg.to_dict(), enabled=self.engine.is_main, total_nimg=total,
                          start_nimg=self.nimg, progress=cfg.log.progress)
        units = {k: max(round(getattr(cfg.log, k) * 1000), 1) for k in ("tick_kimg", "image_kimg", "snapshot_kimg")}
        # Signals can only be caught in the main thread (a worker thread of a host framework keeps its own).
        in_main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main \
            else {}
        scalars: dict[str, float] = {}
        last_snapshot = None
        try:
            if self.nimg == 0:
                self._reals_grid(monitor)
                self._grid(monitor)
            while self.nimg < total and not self.engine.any(self._stop_signal is not None):
                start, before = time.perf_counter(), self.nimg
                self.train_step()
                self.elapsed += time.perf_counter() - start
                monitor.advance(self.nimg - before)
                done = self.nimg >= total

                def due(key: str) -> bool:
                    return done or before // units[key] != self.nimg // units[key]

                if due("tick_kimg"):
                    self.stats.add("Data/skipped", torch.tensor(float(self.loader.skipped)))
                    self.stats.add("LR/G", torch.tensor(self.G.optimizer.param_groups[0]["lr"]))
                    self.stats.add("LR/D", torch.tensor(self.D.optimizer.param_groups[0]["lr"]))
                    scalars = monitor.report(self.nimg, self.stats.reduce(self.engine), self.device)
                if due("image_kimg"):
                    self._grid(monitor)
                if due("snapshot_kimg"):
                    last_snapshot = self.snapshot()
            if self.nimg < total:  # stopped by a signal on some rank
                log.warning("stop requested (signal %s) at kimg %.2f: checkpointing and stopping", self._stop_signal,
                            self.nimg / 1000)
                last_snapshot = self.snapshot()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            monitor.close()
            self.loader.close()
        return {"nimg": self.nimg, "step": self.step, "scalars": scalars, "checkpoint": last_snapshot,
                "interrupted": self.nimg < total}


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a} -> {b}")
    return changes


def run(cfg: Config, run_dir: str | Path, resume: str | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """Train CFG in RUN_DIR. RESUME: None (fresh; refuses a run dir with checkpoints), 'auto' (latest
    checkpoint of RUN_DIR if any) or a checkpoint path."""
    run_dir = Path(run_dir)
    engine = engine or make_engine(cfg)
    state = None
    if resume == "auto":
        found = checkpoint.load_latest(run_dir) if run_dir.exists() else None
        if found:
            state = found[1]
            log.info("resuming from %s", found[0])
    elif resume:
        state = checkpoint.load(resume)
    elif checkpoint.list_checkpoints(run_dir):
        raise ConfigError("", f"{run_dir} already holds checkpoints; pass --resume auto to continue that run or "
                          "--run-dir for a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
    if engine.is_main:
        setup_logging(run_dir, quiet_console=cfg.log.progress)
    manifest = read_manifest(cfg.data.path)
    cfg = resolve(cfg, manifest, engine.world_size)
    if state is not None:
        changes = _config_changes(state["config"], cfg.to_dict())
        if changes:
            log.warning("config differs from the checkpoint's: %s", "; ".join(changes))
    if engine.is_main:
        atomic_write(run_dir / "config.yaml", config_mod.dump(cfg))
    try:
        return Trainer(cfg, run_dir, engine, state, manifest).train()
    finally:
        engine.close()
