"""The training loop: one for every model and every engine.

Each step takes one global batch of real samples and runs the phases whose interval has come round:
D main (the adversarial loss of `loss.name`, plus every regularizer that is not lazy), one D reg phase
per lazy gradient penalty (r1, r2, gp: every `interval` D steps, weight scaled by the interval), G
main (every d_steps D steps) and, for a style-based G, path length (every `loss.pl.interval` G steps).
A phase accumulates gradients over micro-batches and then takes one optimizer step. After the phases
G_ema is updated. Training length and every interval are counted in images shown to D, so changing the
batch size never changes what "10 kimg" means.

All training randomness (latents, fake labels) comes from one generator whose state is checkpointed;
snapshots and grids use their own fixed seeds. So resuming from a checkpoint, or extending a finished
run with a larger train.kimg, continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gantrain import config as config_mod
from gantrain import losses, models
from gantrain.augment import Augment, Draws, adjust_p
from gantrain.atomic import RunLock, atomic_write, remove_stale_temps
from gantrain.config import Config, ConfigError, OptimConfig
from gantrain.data.stream import Manifest, StreamLoader, open_data, samples
from gantrain.data.toy import ToyLoader, ToyProblem
from gantrain.engines import Engine, Net, make_engine
from gantrain.metrics import HIGHER_IS_BETTER
from gantrain.models import DOutput
from gantrain.models.layers import EqualizedConv2d, EqualizedLinear
from gantrain.monitor import Monitor, Stats, setup_logging
from gantrain.sampling import generate, latents, make_grid, readable_scale, save_png, to_uint8
from gantrain.train import checkpoint
from gantrain.train.ema import ema_beta, update_ema
from gantrain.train.guard import DivergedError, StepGuard
from gantrain.train.schedule import Schedule, Stage
from gantrain.visual import label_scale, truncation_sweep

log = logging.getLogger("gantrain")
CHECKPOINT_FORMAT = "gantrain-checkpoint/1"
GRID_SEED = 123  # fixed latents for the progress grids, independent of run.seed
TRUNCATION_PSIS = (1.0, 0.7, 0.5, 0.3, 0.0)


@dataclass
class Phase:
    name: str
    net: str  # "G" or "D": the network this phase trains
    interval: int  # in D steps for D phases, in G steps for G phases
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    shrink: int = 1  # the phase's latents: the first 1/shrink of the global batch's
    after: Callable[[], None] | None = None  # once the phase's micro-batches are done (running statistics)


def _unused(out: DOutput) -> torch.Tensor:
    """0 times every output of a wrapped D: keeps each of its parameters in the graph of a loss that
    does not need them all (a data-parallel gradient reduction waits for every parameter)."""
    zero = out.logits.float().sum() * 0
    return zero if out.class_logits is None else zero + out.class_logits.float().sum() * 0


def _filters(module: torch.nn.Module) -> list[torch.Tensor]:
    """Conv and linear weights as applied, output filters first (BigGAN's orthogonal regularization set):
    transposed convs keep outputs in dim 1, equalized-lr layers apply their run-time scale."""
    out = []
    for m in module.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            out.append(m.weight.transpose(0, 1))
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, EqualizedConv2d, EqualizedLinear)):
            out.append(m.weight * getattr(m, "scale", 1.0))
    return out


class ActiveView(nn.Module):
    """The submodules a growing model uses at its current stage, registered under their names in the
    full model, so an engine wraps (and reduces gradients for) exactly the parameters that get them;
    forward runs the full model. For a model that does not grow, the model itself is used instead."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.parts = nn.ModuleDict({name.replace(".", "/"): m for name, m in model.active_modules().items()})
        object.__setattr__(self, "model", model)  # not a child: its inactive parameters stay out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def _view(model: nn.Module) -> nn.Module:
    return ActiveView(model) if hasattr(model, "active_modules") else model


def _optimizer_by_name(net: Net) -> dict[str, Any]:
    """NET's optimizer state per parameter, keyed by parameter name (collective under ZeRO)."""
    names = [name for name, _ in net.raw.named_parameters()]
    return {names[i]: value for i, value in net.state_dict()["optimizer"]["state"].items()}


def _load_optimizer_by_name(net: Net, by_name: dict[str, Any]) -> None:
    """Restore the state of the parameters NET shares with BY_NAME; the others start fresh."""
    state = net.state_dict()
    names = [name for name, _ in net.raw.named_parameters()]
    state["optimizer"]["state"] = {i: by_name[name] for i, name in enumerate(names) if name in by_name}
    net.load_state_dict(state)


def make_optimizer(o: OptimConfig, params: Any, lr: float, ratio: float = 1.0) -> torch.optim.Optimizer:
    """The optimizer of `optim.name`. RATIO < 1 for a network with lazy regularization phases: lr and
    the moment decay rates are scaled so the optimizer keeps its time constants (StyleGAN2, appendix B)."""
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr * ratio, betas=tuple(b ** ratio for b in o.betas), eps=o.eps)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr * ratio, alpha=0.99 ** ratio, eps=o.eps)
    return torch.optim.SGD(params, lr=lr * ratio)


def resolve(cfg: Config, manifest: Manifest | None, world_size: int) -> Config:
    """Fill in what the config leaves to the data and the world size; refuse impossible combinations."""
    if cfg.progressive.enabled:  # the batch changes with the resolution: check every one now
        group = cfg.model.minibatch_group
        for batch in {cfg.train.batch, *cfg.progressive.batch.values()}:
            micro, _ = dataclasses.replace(cfg.train, batch=batch).accumulation(world_size)
            if cfg.model.minibatch == "stddev" and micro > group and micro % group:
                raise ConfigError("model.minibatch_group", f"{group} does not divide the micro-batch of {micro} "
                                  f"images (global batch {batch} over {world_size} ranks)")
    if manifest is None:  # a toy problem: samples are vectors
        if cfg.loss.r1.weight == "auto":
            raise ConfigError("loss.r1.weight", "auto is computed from the image resolution; toy problems need a "
                              "number")
        micro, _ = cfg.train.accumulation(world_size)
        return cfg.replace(train=dataclasses.replace(cfg.train, micro_batch=micro)).validate()
    if not manifest.resolution and not cfg.model.resolution:
        raise ConfigError("model.resolution", f"is required: {manifest.root} is an index of images of any size, "
                          f"which are fitted to it (data.resize)")
    resolution = cfg.model.resolution or manifest.resolution
    if manifest.resolution and resolution > manifest.resolution:
        raise ConfigError("model.resolution", f"{resolution} exceeds the data's {manifest.resolution} "
                          f"({manifest.root}); repack at a higher --resolution")
    if cfg.progressive.enabled and cfg.progressive.start_resolution > resolution:
        raise ConfigError("progressive.start_resolution", f"{cfg.progressive.start_resolution} exceeds the model's "
                          f"resolution {resolution}")
    if cfg.model.conditional and manifest.num_classes < 2:
        raise ConfigError("model.conditional", f"the data in {manifest.root} has only one class")
    micro, _ = cfg.train.accumulation(world_size)
    if cfg.progressive.enabled:
        micro = cfg.train.micro_batch  # None: each stage's per-rank batch
    loss = cfg.loss
    if loss.r1.weight == "auto":  # StyleGAN2-ADA's heuristic (train.py, cfg 'auto'), for the global batch
        gamma = 0.0002 * resolution ** 2 / cfg.train.batch
        log.info("loss.r1.weight auto: gamma = 0.0002 * %d^2 / %d = %.6g", resolution, cfg.train.batch, gamma)
        loss = dataclasses.replace(loss, r1=dataclasses.replace(loss.r1, weight=gamma))
    if loss.pl.weight and micro and micro % loss.pl.batch_shrink:
        raise ConfigError("loss.pl.batch_shrink", f"{loss.pl.batch_shrink} does not divide the micro-batch of "
                          f"{micro} images (global batch {cfg.train.batch} over {world_size} ranks)")
    return cfg.replace(model=dataclasses.replace(cfg.model, resolution=resolution), loss=loss,
                       train=dataclasses.replace(cfg.train, micro_batch=micro)).validate()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)


class Host:
    """What a hosting framework (Ray Train) hears from the loop and may ask of it. The default does nothing.
    Both methods are called on every rank at the same points (the host may use them as barriers)."""

    sections: tuple[str, ...] = ()  # config sections of the host's own (listed in HParams when it runs)

    def checkpointed(self, path: Path | None, nimg: int, scalars: dict[str, float]) -> None:
        """A checkpoint was written (PATH on rank 0, None on the others)."""

    def preempted(self) -> bool:
        """Once per tick: True asks for a checkpoint now (the node is about to go away)."""
        return False

    def stop_requested(self) -> bool:
        """Every step, this rank's view (the loop agrees across ranks): checkpoint and stop, like SIGTERM."""
        return False


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, engine: Engine, state: dict[str, Any] | None = None,
                 manifest: Manifest | None = None, host: Host | None = None):
        self.cfg, self.run_dir, self.engine = cfg, run_dir, engine
        self.host = host or Host()
        self.scalars: dict[str, float] = {}  # the last tick's figures
        self.toy = ToyProblem(cfg.data.toy) if cfg.data.toy.name != "none" else None
        self.manifest = None if self.toy else (manifest or open_data(cfg.data)).at(cfg.model.resolution)
        self.device = engine.device
        self.spec = self.toy.spec if self.toy else models.DataSpec(
            cfg.model.resolution, self.manifest.channels, self.manifest.num_classes)

        seed_everything(cfg.run.seed, cfg.run.deterministic)  # same initial weights on every rank
        G, D = models.build(cfg.model, self.spec)
        # The full networks; the engines wrap _view(...) of them (for a growing model: its active part).
        layout = torch.channels_last if cfg.engine.channels_last else torch.contiguous_format
        self.layout = layout if not self.toy else torch.contiguous_format
        self.G_model = G.to(self.device, memory_format=self.layout)
        self.D_model = D.to(self.device, memory_format=self.layout)
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        L = cfg.loss
        self.d_objective, self.g_objective = losses.OBJECTIVES[L.name]
        penalties = {name: getattr(L, name) for name in ("r1", "r2", "gp") if getattr(L, name).weight > 0}
        self.eager = [name for name, reg in penalties.items() if reg.interval == 1]
        lazy = {name: reg for name, reg in penalties.items() if reg.interval > 1}
        # Lazy phases of intervals k_i make D's optimizer step 1 + sum(1/k_i) times per D step; a ratio of
        # 1 / (1 + sum(1/k_i)) keeps its time constants (k / (k + 1) for one phase, as in StyleGAN2).
        self.ratio = 1 / (1 + sum(1 / reg.interval for reg in lazy.values()))

        self.phases = [Phase("Dmain", "D", 1, self._d_main)]
        self.phases += [Phase(f"D{name}", "D", reg.interval, functools.partial(self._d_reg, name))
                        for name, reg in lazy.items()]
        self.phases.append(Phase("Gmain", "G", 1, self._g_main))
        # Path length: a lazy G phase, so G's lr and betas are scaled like D's. Its running mean of the lengths
        # is training state, averaged over ranks and micro-batches (the reference keeps one per GPU).
        self.g_ratio = 1.0
        self.pl_mean = torch.zeros((), device=self.device)
        self._pl_sum = torch.zeros((), device=self.device)
        self._pl_noises: Iterator[torch.Tensor] | None = None  # the current phase's, one per micro-batch
        self.phase_seed = 0  # the current phase's seed before the rank is added (rank-independent draws)
        if L.pl.weight:
            if not callable(getattr(G, "mapping", None)):
                raise ConfigError("loss.pl.weight", f"path-length regularization needs a style-based generator "
                                  f"(mapping/synthesis, e.g. model.name=stylegan2), not '{cfg.model.name}'")
            self.g_ratio = L.pl.interval / (L.pl.interval + 1)
            self.phases.append(Phase("Gpl", "G", L.pl.interval, self._g_pl, L.pl.batch_shrink, self._pl_update))
        # Randomness inside the losses (interpolation weights, instance noise): a device generator reseeded
        # from the checkpointed one at every phase, different per rank. Randomness inside a stochastic G
        # (a style-based G's noise inputs and style mixing) comes from torch's default generators, reseeded
        # the same way: otherwise every rank, seeded alike for identical initial weights, would draw the
        # same noise maps for its different samples.
        # Augmentation of every D input (gantrain.augment): its draws are made for the phase's global batch
        # from a rank-independent seed, so a sample's augmentation does not depend on how the batch is split.
        A = cfg.augment
        self.augment = Augment(A.name, A.policy, A.pipe) if A.name != "none" else None
        self.adaptive = A.name == "ada" and A.target is not None
        self.aug_p = A.p  # ADA's probability: training state, checkpointed
        self._rt = torch.zeros(2, device=self.device)  # sum of sign(D(real)) and count since the last adjustment
        self._micro_index = self._aug_calls = 0
        self.needs_rand = ("gp" in penalties or L.instance_noise.std > 0 or G.stochastic or L.pl.weight > 0
                           or self.augment is not None)
        self.rand = torch.Generator(device=self.device)
        if "gp" in penalties and cfg.model.norm == "batch" and cfg.model.name == "dcgan":
            log.warning("loss.gp with batch norm in D: the penalty is per sample but batch norm couples the "
                        "samples (Gulrajani et al. drop it); consider model.norm=none")

        self.nimg = self.step = self.g_step = 0
        self.elapsed = 0.0
        # One latent generator, identical on every rank: each step draws the whole global batch and a
        # rank takes its slice, so training randomness does not depend on the world size.
        self.gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.run.seed, 1]).generate_state(1)[0]))
        self.stats = Stats()
        self.schedule = Schedule(cfg, self.spec.resolution)
        self.stage: Stage | None = None
        self.G: Net | None = None
        self.D: Net | None = None
        self.loader: StreamLoader | ToyLoader | None = None
        self.transitions: list[dict[str, Any]] = []  # what each re-wrap cost, for the benchmark
        data_state = None
        if state is not None:
            ranks = state["data"]
            # Another world size: the loader sees a foreign layout and restarts at the next epoch (logged).
            data_state = ranks[engine.rank] if len(ranks) == engine.world_size else ranks[0]
        self._enter(self.schedule.at(state["counters"]["nimg"] if state else 0), data_state)
        if state is not None:
            self._restore(state)
        self._stop_signal: int | None = None
        self.guard, self.bad_steps = StepGuard(), 0
        self.data_seen = (self.loader.skipped, self.loader.short_shards, self.loader.lost_shards)
        # Evaluation during training: every rank embeds its share of the samples (gantrain.metrics).
        self.extractor = None
        if cfg.eval.metrics:  # torchmetrics (and its scipy) is imported only by a run that evaluates
            from gantrain.metrics.features import load_extractor

            self.extractor = load_extractor(cfg.eval.extractor, cfg.eval.extractor_path, self.device)
        self.best: dict[str, Any] | None = state.get("eval", {}).get("best") if state else None
        self._eval_explained = False  # the feature space and count caveats are logged at the first evaluation

    # ---- stages -----------------------------------------------------------------------------------
    def _enter(self, stage: Stage, data_state: dict[str, Any] | None = None) -> None:
        """Make STAGE current: set the models' resolution and alpha; when the set of active modules
        changes, re-wrap both networks (optimizer state carried over by parameter name unless
        progressive.reset_optimizer at a new resolution); when the batch changes, re-split it and
        reopen the data stream at the same cursor."""
        old, self.stage = self.stage, stage
        for model in (self.G_model, self.D_model, self.G_ema):
            if hasattr(model, "set_stage"):
                model.set_stage(stage.resolution, stage.alpha)
        start = time.perf_counter()
        rewrap = old is None or old.structure != stage.structure
        if rewrap:
            reset = old is not None and old.resolution != stage.resolution and self.cfg.progressive.reset_optimizer
            self._wrap(stage, carry=old is not None and not reset)
        micro, self.accum = dataclasses.replace(self.cfg.train, batch=stage.batch).accumulation(
            self.engine.world_size)
        if self.loader is None or micro != self.micro:
            if self.loader is not None:
                data_state = self.loader.state_dict()
                self.loader.close()
            self.micro = micro
            self.loader = self._open_loader(data_state)
        if rewrap:  # the cost of a transition: re-wrap, optimizer hand-over, reopening the stream
            self.transitions.append({"nimg": self.nimg, "resolution": stage.resolution, "fade": stage.alpha < 1,
                                     "seconds": time.perf_counter() - start})
            if old is not None:
                log.info("stage %dx%d %s at kimg %.2f: re-wrapped in %.3f s", stage.resolution, stage.resolution,
                         stage.phase, self.nimg / 1000, self.transitions[-1]["seconds"])

    def _wrap(self, stage: Stage, carry: bool) -> None:
        o = self.cfg.optim
        scale = o.lr_scale(stage.batch)
        saved = {}
        for name in ("G", "D"):
            net = getattr(self, name)
            if net is not None:
                if carry:
                    saved[name] = _optimizer_by_name(net)
                self.engine.release(net)
        # requires_grad on: a wrapper refuses a module it sees frozen (the last phase froze one of them).
        self.G = self.engine.setup(_view(self.G_model).requires_grad_(True),
                                   lambda params: make_optimizer(o, params, stage.g_lr * scale, self.g_ratio))
        self.D = self.engine.setup(_view(self.D_model).requires_grad_(True),
                                   lambda params: make_optimizer(o, params, stage.d_lr * scale, self.ratio))
        for name, by_name in saved.items():
            _load_optimizer_by_name(getattr(self, name), by_name)

    def _open_loader(self, state: dict[str, Any] | None) -> StreamLoader | ToyLoader:
        cfg, engine = self.cfg, self.engine
        if self.toy:
            return ToyLoader(self.toy, self.micro, cfg.run.seed, engine.rank, engine.world_size, state)
        return StreamLoader(self.manifest, batch_size=self.micro, seed=cfg.run.seed, shuffle=cfg.data.shuffle,
                            rank=engine.rank, world_size=engine.world_size, num_workers=cfg.data.workers,
                            state=state, sampling=cfg.data.sampling, pin_memory=self.device.type == "cuda",
                            max_bad_in_a_row=cfg.data.max_skipped_in_a_row)

    # ---- phases -----------------------------------------------------------------------------------
    # Each loss runs under the engine's autocast. The network being trained is called through
    # `.module` (the engine's wrapper, which reduces gradients); the frozen one through `.raw`, so no
    # gradient of it is computed or synchronized. Scores are cast to fp32 before any reduction. Every
    # output of a wrapped D enters the loss (times 0 if unused): a data-parallel gradient reduction
    # waits for every parameter. Penalties are taken at the inputs D sees (noisy ones with instance noise).
    def _d_main(self, real, real_c, z, c) -> torch.Tensor:
        L = self.cfg.loss
        with torch.no_grad():
            fake = self.G.raw(z, c)
        real, fake = self._noisy(real), self._noisy(fake)
        if "r1" in self.eager:
            real = real.detach().requires_grad_(True)
        if "r2" in self.eager:
            fake = fake.detach().requires_grad_(True)
        # R1/R2 in this phase differentiate D's input gradient again: not through a compiled graph
        d = self.D.uncompiled if {"r1", "r2"} & set(self.eager) else self.D.module
        r = d(self._augmented(real), real_c, features=True)
        f = d(self._augmented(fake), c, features=True)
        real_logits, fake_logits = r.logits.float(), f.logits.float()
        if self.adaptive:
            with torch.no_grad():
                self._rt += torch.stack([real_logits.sign().sum(), real_logits.new_tensor(float(real_logits.numel()))])
        loss = self.d_objective(real_logits, fake_logits, L.label_smoothing).mean()
        self.stats.add("Loss/D", loss)
        self.stats.add("Logits/real", real_logits)
        self.stats.add("Logits/fake", fake_logits)
        if r.class_logits is not None:
            aux = (losses.acgan_loss(r.class_logits, real_c) + losses.acgan_loss(f.class_logits, c)).mean() / 2
            self.stats.add("Loss/D_aux", aux)
            loss = loss + aux * L.acgan
        if L.drift.weight and self.step % L.drift.interval == 0:
            drift = losses.drift_penalty(real_logits)
            self.stats.add("Loss/drift", drift)
            loss = loss + drift.mean() * (L.drift.weight * L.drift.interval)
        for name in self.eager:
            loss = loss + self._penalty(name, real, real_c, fake, c, real_logits if name == "r1" else fake_logits)
        return loss

    def _d_reg(self, name: str, real, real_c, z, c) -> torch.Tensor:
        """A lazy gradient penalty as its own phase (gp makes its own forward on interpolates)."""
        if name == "r1":
            x, x_c = self._noisy(real), real_c
        else:
            with torch.no_grad():
                fake = self._noisy(self.G.raw(z, c))
            if name == "gp":
                return self._penalty(name, self._noisy(real), real_c, fake, c, None)
            x, x_c = fake, c
        x = x.detach().requires_grad_(True)
        out = self.D.uncompiled(self._augmented(x), x_c, features=True)
        return self._penalty(name, x, real_c, x, c, out.logits.float()) + _unused(out)

    def _penalty(self, name: str, real, real_c, fake, c, logits) -> torch.Tensor:
        """The weighted penalty NAME (r1, r2: at the given LOGITS' inputs; gp: at fresh interpolates)."""
        reg, scale = getattr(self.cfg.loss, name), self.D.loss_scale()
        if name == "r1":
            value, weight, zero = losses.r1_penalty(logits, real, scale), reg.weight / 2, 0
        elif name == "r2":
            value, weight, zero = losses.r2_penalty(logits, fake, scale), reg.weight / 2, 0
        else:
            eps = torch.rand(real.shape[0], generator=self.rand, device=real.device)
            mixed = losses.interpolate(real.detach(), fake.detach(), eps).requires_grad_(True)
            out = self.D.uncompiled(self._augmented(mixed), real_c, features=True)
            value = losses.gradient_penalty(out.logits.float(), mixed, scale, reg.center, reg.one_sided)
            weight, zero = reg.weight, _unused(out)
        self.stats.add(f"Loss/{name.upper()}", value)
        return value.mean() * (weight * reg.interval) + zero

    def _g_main(self, real, real_c, z, c) -> torch.Tensor:
        L = self.cfg.loss
        out = self.D.raw(self._augmented(self._noisy(self.G.module(z, c))), c, features=True)
        loss = self.g_objective(out.logits.float()).mean()
        self.stats.add("Loss/G", loss)
        if out.class_logits is not None:
            aux = losses.acgan_loss(out.class_logits, c).mean()
            self.stats.add("Loss/G_aux", aux)
            loss = loss + aux * L.acgan
        if L.feature_matching:
            with torch.no_grad():
                target = self.D.raw(self._augmented(self._noisy(real)), real_c, features=True).features
            fm = losses.feature_matching_loss(target, out.features)
            self.stats.add("Loss/feature_matching", fm)
            loss = loss + fm * L.feature_matching
        if L.ortho.weight and self.g_step % L.ortho.interval == 0:
            ortho = losses.orthogonal_penalty(_filters(self.G.raw))  # the active filters
            self.stats.add("Loss/ortho", ortho)
            loss = loss + ortho * (L.ortho.weight * L.ortho.interval)
        return loss

    def _g_pl(self, real, real_c, z, c) -> torch.Tensor:
        """Path-length regularization (StyleGAN2): lengths of J_w^T y for random image-space directions y,
        pulled towards their running mean. The double backward goes through the wrapped G under DDP (whose
        reducer needs its forward), through the plain module under DeepSpeed (Net.for_double_backward)."""
        pl = self.cfg.loss.pl
        img, ws = self.G.for_double_backward(z, c, return_ws=True)
        noise = self._pl_noise(img) / math.sqrt(img.shape[2] * img.shape[3])
        # The inner gradient unscaled, as the reference computes it: at fp16 loss scales (2^16) it overflows
        # in the fp16 layers long before the main G loss does. The outer backward is scaled as usual.
        lengths = losses.path_lengths(img, ws, noise)
        self._pl_sum += lengths.detach().mean() / self.accum
        penalty = losses.path_length_penalty(lengths, self.pl_mean)
        self.stats.add("Loss/PL", penalty)
        self.stats.add("PL/length", lengths.detach())
        # img * 0: every output of the wrapped G enters the loss, as with a wrapped D (_unused)
        return penalty.mean() * (pl.weight * pl.interval) + img[:, 0, 0, 0].float().sum() * 0

    def _pl_noise(self, img: torch.Tensor) -> torch.Tensor:
        """This micro-batch's random directions y, cut from one draw for the phase's whole global batch (the
        same on every rank), so the penalty does not depend on how the batch is split."""
        if self._pl_noises is None:
            micro = img.shape[0]
            per_rank = micro * self.accum
            rand = torch.Generator(device=self.device).manual_seed(self.phase_seed)
            every = torch.randn((per_rank * self.engine.world_size, *img.shape[1:]), generator=rand,
                                device=self.device)
            self._pl_noises = iter(every[self.engine.rank * per_rank:][:per_rank].split(micro))
        return next(self._pl_noises).to(img.dtype)

    def _pl_update(self) -> None:
        """The running mean moves towards this phase's mean length over every rank and micro-batch."""
        mean = self.engine.all_reduce_mean(self._pl_sum.clone()).to(self.device)
        self._pl_sum.zero_()
        self._pl_noises = None
        if torch.isfinite(mean):  # a non-finite phase is skipped; the mean stays
            self.pl_mean.lerp_(mean, self.cfg.loss.pl.decay)
        self.stats.add("PL/mean", self.pl_mean.detach().clone())

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        """Instance noise on a D input, its std annealed linearly over instance_noise.anneal_kimg."""
        noise = self.cfg.loss.instance_noise
        std = noise.std * (max(0.0, 1 - self.nimg / (noise.anneal_kimg * 1000)) if noise.anneal_kimg else 1)
        if not std:
            return x
        return x + std * torch.randn(x.shape, generator=self.rand, device=x.device, dtype=x.dtype)

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        """X as D sees it: augmented (in fp32) with draws for this micro-batch's rows of the phase's global
        batch; the k-th call of every micro-batch shares one seed, so each rank and micro-batch takes its
        own rows of the same draws."""
        if self.augment is None:
            return x
        n = x.shape[0]
        seed = int(np.random.SeedSequence([self.phase_seed, self._aug_calls]).generate_state(1, np.uint64)[0] >> 1)
        self._aug_calls += 1
        draws = Draws(torch.Generator(device=self.device).manual_seed(seed),
                      offset=(self.engine.rank * self.accum + self._micro_index) * n,
                      total=n * self.accum * self.engine.world_size)
        with torch.autocast(x.device.type, enabled=False):
            return self.augment(x.float(), self.aug_p, draws)

    def _adapt_augment(self) -> None:
        """ADA: every augment.interval D steps, r_t over them (all ranks) moves p towards augment.target."""
        A = self.cfg.augment
        total = self.engine.all_reduce_mean(self._rt.clone()).to(self.device)
        self._rt.zero_()
        if total[1] > 0:
            rt = float(total[0] / total[1])
            self.aug_p = adjust_p(self.aug_p, rt, A.target, self.stage.batch * A.interval, A.speed_kimg)
            self.stats.add("Augment/rt", torch.tensor(rt))

    def _latents(self, shrink: int = 1) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
        """This rank's slice of latents (and fake labels) drawn for the whole global batch, split into
        micro-batches: accumulation and data parallelism see exactly what one large batch would. SHRINK > 1:
        the first 1/SHRINK of the global batch's latents (resolve() checked that it divides the micro-batch)."""
        batch = self.stage.batch
        micro = self.micro // shrink
        per_rank = micro * self.accum
        mine = slice(self.engine.rank * per_rank, (self.engine.rank + 1) * per_rank)
        z = torch.randn(batch, self.G_model.z_dim, generator=self.gen)[:batch // shrink][mine].to(self.device)
        if not self.G_model.num_classes:
            return z.split(micro), (None,) * self.accum
        c = torch.randint(self.G_model.num_classes, (batch,), generator=self.gen)[:batch // shrink][mine]
        return z.split(micro), c.to(self.device).split(micro)

    def _run_phase(self, phase: Phase, reals: list[torch.Tensor], labels: list[torch.Tensor]) -> bool:
        trained = self.G if phase.net == "G" else self.D
        for net in (self.G, self.D):  # a frozen D in the G phase keeps G's gradients out of D
            net.raw.requires_grad_(net is trained)
        zs, cs = self._latents(phase.shrink)
        if self.needs_rand:
            self.phase_seed = int(torch.randint(2 ** 62, (1,), generator=self.gen))
            seed = self.phase_seed + self.engine.rank
            self.rand.manual_seed(seed)
            torch.manual_seed(seed)
        for i in range(self.accum):
            self._micro_index, self._aug_calls = i, 0
            sync = contextlib.nullcontext() if i == self.accum - 1 else trained.no_sync()
            with sync:
                with self.engine.autocast():
                    loss = phase.loss(reals[i], labels[i], zs[i], cs[i])
                trained.backward(loss / self.accum)
        if phase.after is not None:
            phase.after()
        applied, norm = trained.step()
        if trained is self.D and self.cfg.loss.clip:  # WGAN: the critic's weights stay in [-c, c]
            with torch.no_grad():
                for p in self.D.raw.parameters():
                    p.clamp_(-self.cfg.loss.clip, self.cfg.loss.clip)
        self.stats.add(f"GradNorm/{phase.name}", norm)
        self.stats.add(f"Skipped/{phase.name}", torch.tensor(0.0 if applied else 1.0))
        return applied

    def _real_batch(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        reals, labels = [], []
        for _ in range(self.accum):
            images, c = next(self.loader)
            x = images.to(self.device, non_blocking=True).to(torch.get_default_dtype())
            if not self.toy:  # toy samples are vectors already in model space
                x = self._at_stage(x / 127.5 - 1).contiguous(memory_format=self.layout)
            reals.append(x)
            labels.append(c.to(self.device, non_blocking=True))
        return reals, labels

    def _at_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Real images at the stage's resolution (box filter from the packed size); while a block fades
        in, blended with their down-then-up-sampled version by the same alpha as G and D."""
        if x.shape[-1] != self.stage.resolution:
            x = F.avg_pool2d(x, x.shape[-1] // self.stage.resolution)
        if self.stage.alpha < 1:
            x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest"), x, self.stage.alpha)
        return x

    def train_step(self) -> None:
        stage = self.schedule.at(self.nimg)
        if stage != self.stage:
            self._enter(stage)
        reals, labels = self._real_batch()
        nets = [self.G, self.D]
        self.guard.keep(nets)
        g_applied, all_applied = True, True
        for phase in self.phases:
            is_g = phase.net == "G"
            if is_g and (self.step + 1) % self.cfg.train.d_steps:
                continue
            if (self.g_step if is_g else self.step) % phase.interval:
                continue
            applied = self._run_phase(phase, reals, labels)
            g_applied = g_applied and (applied or not is_g)
            all_applied = all_applied and applied
        # Collective: batch-norm buffers are per rank, and every rank must take the same decision.
        reverted = self.engine.any(not self.guard.finite(nets))
        if reverted:
            self.guard.revert(nets)
            g_applied = False
        self._count_bad_step(reverted or not all_applied)
        if (self.step + 1) % self.cfg.train.d_steps == 0:
            self.g_step += 1
        batch = self.stage.batch
        if g_applied:  # a G step skipped (fp16 overflow, non-finite values) leaves G_ema alone too
            update_ema(self.G_ema, self.G_model, ema_beta(batch, self.nimg, self.cfg.train.ema_kimg,
                                                          self.cfg.train.ema_rampup, self.cfg.train.ema_start))
        self.nimg += batch
        self.step += 1
        if self.adaptive and self.step % self.cfg.augment.interval == 0:
            self._adapt_augment()
        if self.augment is not None:
            self.stats.add("Augment/p", torch.tensor(self.aug_p))

    def _data_health(self) -> None:
        """Per tick: corrupt samples, short shards and shards lost after the retries to TensorBoard, and a log
        line while they keep coming (the per-sample warnings stop after 10 per stream), so a data set going bad
        mid-run shows in log.txt."""
        seen = (self.loader.skipped, self.loader.short_shards, self.loader.lost_shards)
        for name, value in zip(("Data/skipped", "Data/short_shards", "Data/skipped_shards"), seen):
            self.stats.add(name, torch.tensor(float(value)))
        if seen != self.data_seen:
            notes = self.loader.notes
            log.warning("data: %d corrupt samples skipped so far (+%d this tick), %d short shards, %d shards "
                        "unavailable; last: %s", seen[0], seen[0] - self.data_seen[0], seen[1], seen[2],
                        notes.get("last_skip") or notes.get("last_lost") or notes.get("last_short", "?"))
            self.data_seen = seen

    def _count_bad_step(self, bad: bool) -> None:
        """Skipped or rolled-back steps are counted; max_bad_steps of them in a row end the run."""
        self.stats.add("Skipped/nonfinite", torch.tensor(1.0 if bad else 0.0))
        self.bad_steps = self.bad_steps + 1 if bad else 0
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            found = checkpoint.list_checkpoints(self.run_dir)
            last = found[-1] if found else "none (nothing was saved)"
            raise DivergedError(f"{self.bad_steps} steps in a row skipped for non-finite values (inf/NaN loss, "
                                f"gradients or weights) at kimg {self.nimg / 1000:.3f} (train.max_bad_steps); "
                                f"last good checkpoint: {last}")

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config_mod.redacted(self.cfg),
            "spec": dataclasses.asdict(self.spec),
            "counters": {"nimg": self.nimg, "step": self.step, "g_step": self.g_step, "elapsed": self.elapsed},
            # Weights of the full network, optimizer state (of the current stage's active parameters) and the
            # fp16 loss scaler of each network.
            "G": {**self.G.state_dict(), "model": self.G_model.state_dict()},
            "D": {**self.D.state_dict(), "model": self.D_model.state_dict()},
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
            "eval": {"best": self.best},  # best figure so far: {figure, value, nimg} or None
            "pl_mean": self.pl_mean.detach().cpu().clone(),  # path length's running mean (0 without it)
            "augment": {"p": self.aug_p, "rt": self._rt.detach().cpu().clone()},  # ADA's p and r_t so far
        }

    def _restore(self, state: dict[str, Any]) -> None:
        for name, model in (("G", self.G_model), ("D", self.D_model)):
            model.load_state_dict(state[name]["model"])
            net = getattr(self, name)
            net.load_state_dict({**state[name], "model": net.raw.state_dict()})
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
        if "pl_mean" in state:
            self.pl_mean.copy_(state["pl_mean"])
        if self.cfg.augment.name == "ada" and state["config"].get("augment", {}).get("name") == "ada":
            self.aug_p = float(state["augment"]["p"])
            self._rt.copy_(state["augment"]["rt"])

    def snapshot(self) -> Path | None:
        """Collective (every rank contributes its data cursor); rank 0 writes."""
        state = self.state_dict()
        path = None
        if self.engine.is_main:
            meta = {"config": config_mod.redacted(self.cfg), "spec": dataclasses.asdict(self.spec), "nimg": self.nimg}
            try:
                path = checkpoint.save(self.run_dir, state, self.nimg, self.cfg.log.keep, self.G_ema.state_dict(), meta)
                log.info("checkpoint %s", path)
            except checkpoint.NonFiniteError as exc:  # the previous checkpoint stays the latest
                log.error("kimg %.2f: %s", self.nimg / 1000, exc)
        self.host.checkpointed(path, self.nimg, self.scalars)
        return path

    # ---- side effects -----------------------------------------------------------------------------
    def _evaluate(self, monitor: Monitor) -> None:
        """Collective: metrics of G_ema (every rank embeds its share); rank 0 logs them and, on a new best
        of eval.best, writes checkpoint-best.pt and its G_ema export."""
        from gantrain.metrics.evaluate import evaluate

        figures = evaluate(self.G_ema, self.extractor, self.manifest, self.cfg.eval, self.device)
        if self.engine.is_main and not self._eval_explained:  # once per run: counts and space stay the same
            log.info("eval: figures measured in %s%s", figures.space, f" ({figures.note})" if figures.note else "")
            for caveat in figures.caveats:
                log.warning("eval: %s", caveat)
            self._eval_explained = True
        monitor.metrics(self.nimg, figures)
        name = self.cfg.eval.best_figure
        value = figures[name]
        better = self.best is None or (value > self.best["value"] if HIGHER_IS_BETTER[name]
                                       else value < self.best["value"])
        if not better:
            return
        self.best = {"figure": name, "value": value, "nimg": self.nimg}
        state = self.state_dict()  # collective
        if self.engine.is_main:
            meta = {"config": config_mod.redacted(self.cfg), "spec": dataclasses.asdict(self.spec), "nimg": self.nimg,
                    "best": self.best}
            try:
                path = checkpoint.save_best(self.run_dir, state, self.G_ema.state_dict(), meta)
                log.info("new best %s %.6g at kimg %.2f: %s", name, value, self.nimg / 1000, path)
            except checkpoint.NonFiniteError as exc:
                log.error("kimg %.2f: best checkpoint not written: %s", self.nimg / 1000, exc)

    def _grid(self, monitor: Monitor) -> None:
        if not self.engine.is_main:
            return
        if self.toy:
            grid = self.toy.render(self.G_model, self.device)  # the trained G, as the toy figures
        else:
            g = self.cfg.log.grid
            z, c = latents(g * g, self.G_ema, GRID_SEED, rows=g, device=self.device)
            images = generate(self.G_ema, z, c)
            if images.shape[-1] != self.spec.resolution:  # a growing model: upsampled for display
                images = F.interpolate(images, size=self.spec.resolution, mode="nearest")
            grid = make_grid(to_uint8(images), g)
        if grid is not None:
            save_png(grid, self.run_dir / f"fakes-{self.nimg:010d}.png")
            monitor.image("fakes", grid, self.nimg)
        if not self.toy:  # what `gantrain truncation` draws: a row per latent, a column per psi
            res = self.spec.resolution
            scale = max(label_scale(res), readable_scale(torch.empty(4 * res, len(TRUNCATION_PSIS) * res)))
            monitor.image("truncation", truncation_sweep(self.G_ema, TRUNCATION_PSIS, rows=4, seed=GRID_SEED,
                                                         resolution=res, scale=scale), self.nimg, scale=1)

    def _reals_grid(self, monitor: Monitor) -> None:
        """Reals grid from a separate, unshuffled read: the training stream must not be consumed."""
        if not self.engine.is_main:
            return
        if self.toy:
            grid = self.toy.render(None, self.device)
            if grid is None:
                return
        else:
            g = self.cfg.log.grid
            stream = samples(self.manifest, seed=0, shuffle=False, infinite=False,
                             max_bad_in_a_row=self.cfg.data.max_skipped_in_a_row)
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
        monitor = Monitor(self.run_dir, config_mod.redacted(cfg), enabled=self.engine.is_main, total_nimg=total,
                          start_nimg=self.nimg, progress=cfg.log.progress,
                          hparams_config=config_mod.in_use(cfg, self.host.sections))
        units = {k: max(round(getattr(cfg.log, k) * 1000), 1) for k in ("tick_kimg", "image_kimg", "snapshot_kimg")}
        units["eval"] = max(round(cfg.eval.every_kimg * 1000), 1)
        # Signals can only be caught in the main thread (a worker thread of a host framework keeps its own).
        in_main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main \
            else {}
        scalars: dict[str, float] = {}
        last_snapshot, snapped = None, -1  # snapped: the nimg this run last checkpointed at
        failed = True
        try:
            if self.nimg == 0:
                self._reals_grid(monitor)
                self._grid(monitor)
            while self.nimg < total and not self.engine.any(self._stop_signal is not None
                                                            or self.host.stop_requested()):
                start, before = time.perf_counter(), self.nimg
                self.train_step()
                self.elapsed += time.perf_counter() - start
                monitor.advance(self.nimg - before)
                done = self.nimg >= total

                def due(key: str) -> bool:
                    return done or before // units[key] != self.nimg // units[key]

                if due("tick_kimg"):
                    self._data_health()
                    self.stats.add("LR/G", torch.tensor(self.G.optimizer.param_groups[0]["lr"]))
                    self.stats.add("LR/D", torch.tensor(self.D.optimizer.param_groups[0]["lr"]))
                    if cfg.progressive.enabled:
                        self.stats.add("Progress/resolution", torch.tensor(float(self.stage.resolution)))
                        self.stats.add("Progress/alpha", torch.tensor(self.stage.alpha))
                        self.stats.add("Progress/batch", torch.tensor(float(self.stage.batch)))
                    if self.toy:  # the same on every rank (identical weights): a cheap collective-safe figure
                        for key, value in self.toy.evaluate(self.G_model, self.D_model, self.device).items():
                            self.stats.add(key, torch.tensor(value))
                    scalars = self.scalars = monitor.report(self.nimg, self.stats.reduce(self.engine), self.device)
                    if not done and self.host.preempted():
                        log.warning("preemption notice at kimg %.2f: checkpointing now", self.nimg / 1000)
                        last_snapshot, snapped = self.snapshot(), self.nimg
                if due("image_kimg"):
                    self._grid(monitor)
                if cfg.eval.metrics and due("eval"):
                    self._evaluate(monitor)
                if due("snapshot_kimg") and snapped != self.nimg:
                    last_snapshot, snapped = self.snapshot(), self.nimg
            if self.nimg < total:  # stopped by a signal on some rank
                reason = f"signal {self._stop_signal}" if self._stop_signal else "requested on some rank"
                log.warning("stop requested (%s) at kimg %.2f: checkpointing and stopping", reason, self.nimg / 1000)
                self.loader.close()  # the workers' fate no longer matters: the cursor is in the rank
                if snapped != self.nimg:  # not twice at one step (a host would hear of one checkpoint twice)
                    last_snapshot = self.snapshot()
            failed = False
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.loader.close()
            # a failure in flight (a full disk, say) is the error to report, not a flush that fails after it
            with contextlib.suppress(OSError) if failed else contextlib.nullcontext():
                monitor.close()
        return {"nimg": self.nimg, "step": self.step, "scalars": scalars, "checkpoint": last_snapshot,
                "interrupted": self.nimg < total}


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "",
                    added: list[str] | None = None) -> list[str]:
    """Settings that differ from the checkpoint's; settings its version did not have yet go to ADDED."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f"{prefix}{key}.", added)
        elif key not in old and added is not None:
            added.append(f"{prefix}{key}={b}")
        elif a != b:
            changes.append(f"{prefix}{key}: {a} -> {b}")
    return changes


def run(cfg: Config, run_dir: str | Path, resume: str | None = None, engine: Engine | None = None,
        host: Host | None = None) -> dict[str, Any]:
    """Train CFG in RUN_DIR. RESUME: None (fresh; refuses a run dir with checkpoints), 'auto' (latest
    checkpoint of RUN_DIR if any) or a checkpoint path. HOST: a hosting framework's hooks (Ray Train)."""
    run_dir = Path(run_dir)
    engine = engine or make_engine(cfg)
    state = resumed_from = None
    if resume == "auto":
        found = checkpoint.load_latest(run_dir) if run_dir.exists() else None
        if found:
            resumed_from, state = found
    elif resume:
        resumed_from, state = resume, checkpoint.load(resume)
    elif checkpoint.list_checkpoints(run_dir):
        raise ConfigError("", f"{run_dir} already holds checkpoints; pass --resume auto to continue that run or "
                          "--run-dir for a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
    # A second trainer on this run dir stops here, before touching anything; the lock goes with the run.
    lock = RunLock(run_dir) if engine.is_main else None
    try:
        with checkpoint.disk_full_is_one_line(run_dir):  # config.yaml, log.txt, stats.jsonl, events, pictures
            return _run_locked(cfg, run_dir, engine, state, resumed_from, host)
    finally:
        engine.close()
        if lock is not None:
            lock.release()


def _run_locked(cfg: Config, run_dir: Path, engine: Engine, state: dict[str, Any] | None,
                resumed_from: str | Path | None, host: Host | None) -> dict[str, Any]:
    if engine.is_main:
        setup_logging(run_dir, quiet_console=cfg.log.progress)
        for path in remove_stale_temps(run_dir):
            log.info("removed %s, left by a writer that was killed", path.name)
    if state is not None:
        log.info("resuming from %s at kimg %.2f", resumed_from, state["counters"]["nimg"] / 1000)
        export = checkpoint.export_name(state["counters"]["nimg"])
        if engine.is_main and Path(resumed_from).parent == run_dir and not (run_dir / export).exists():
            # killed between the checkpoint's rename and its export's
            checkpoint.write_export(run_dir, export, state["G_ema"], {
                "config": state["config"], "spec": state["spec"], "nimg": state["counters"]["nimg"]})
            log.info("wrote the missing %s", export)
    manifest = None if cfg.data.toy.name != "none" else open_data(cfg.data)
    cfg = resolve(cfg, manifest, engine.world_size)
    if state is not None:
        added: list[str] = []
        changes = _config_changes(state["config"], config_mod.redacted(cfg), added=added)
        if added:
            log.info("settings newer than the checkpoint's config: %s", ", ".join(added))
        if changes:
            log.warning("config differs from the checkpoint's: %s", "; ".join(changes))
    if engine.is_main:
        atomic_write(run_dir / "config.yaml", config_mod.dump(cfg))
    return Trainer(cfg, run_dir, engine, state, manifest, host).train()
