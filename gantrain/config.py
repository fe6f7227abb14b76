"""Typed experiment config: YAML in, dotted overrides, validation that names the offending key.

The config is data: nested dataclasses with defaults. Every error is a single line that starts with
the dotted key, so a typo in a 40-line YAML file or on the command line is found in one glance.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


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
class DataConfig:
    path: str = ""  # directory with manifest.json and the tar shards (`gantrain pack` writes it)
    workers: int = 2  # DataLoader worker processes per rank; 0 decodes in the training process
    shuffle: bool = True  # shard order per epoch and sample order within a shard
    # epochs: every shard once per epoch, disjoint across ranks; resampled: shards drawn with replacement
    sampling: Literal["epochs", "resampled"] = "epochs"

    def validate(self) -> None:
        _check(bool(self.path), "data.path", "is required (a directory written by `gantrain pack`)")
        _check(self.workers >= 0, "data.workers", f"must be >= 0 (got {self.workers})")


@dataclass
class ModelConfig:
    name: str = "dcgan"
    z_dim: int = 100
    channels: int = 64  # feature maps at the output resolution; doubled per halving
    max_channels: int = 512
    conditional: bool = False
    norm: Literal["batch", "none"] = "batch"
    resolution: int | None = None  # None: the data's resolution (shards are box-downsampled if smaller)

    def validate(self) -> None:
        from gantrain.models import MODELS

        _check(self.name in MODELS, "model.name", f"unknown model '{self.name}' (known: {', '.join(MODELS)})")
        _check(self.z_dim > 0, "model.z_dim", f"must be > 0 (got {self.z_dim})")
        _check(self.channels > 0, "model.channels", f"must be > 0 (got {self.channels})")
        _check(self.max_channels >= self.channels, "model.max_channels", "must be >= model.channels")
        if self.resolution is not None:
            _check(_is_pow2(self.resolution) and self.resolution >= 8, "model.resolution",
                   f"must be a power of two >= 8 (got {self.resolution})")


@dataclass
class LossConfig:
    name: Literal["nonsaturating"] = "nonsaturating"
    r1_gamma: float = 0.0  # 0 disables R1
    r1_interval: int = 16  # lazy regularization: R1 every N D steps (1 = every step, no separate phase)

    def validate(self) -> None:
        _check(self.r1_gamma >= 0, "loss.r1_gamma", f"must be >= 0 (got {self.r1_gamma})")
        _check(self.r1_interval >= 1, "loss.r1_interval", f"must be >= 1 (got {self.r1_interval})")


@dataclass
class OptimConfig:
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

    def validate(self) -> None:
        _check(self.kimg > 0, "train.kimg", f"must be > 0 (got {self.kimg})")
        _check(self.batch > 0, "train.batch", f"must be > 0 (got {self.batch})")
        if self.micro_batch is not None:
            _check(self.micro_batch > 0, "train.micro_batch", f"must be > 0 (got {self.micro_batch})")
            _check(self.batch % self.micro_batch == 0, "train.micro_batch",
                   f"must divide train.batch={self.batch} (got {self.micro_batch})")
        _check(self.d_steps >= 1, "train.d_steps", f"must be >= 1 (got {self.d_steps})")
        _check(self.ema_kimg >= 0, "train.ema_kimg", f"must be >= 0 (got {self.ema_kimg})")
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
class EngineConfig:
    name: Literal["single", "ddp", "deepspeed"] = "single"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (ddp: each rank takes cuda:LOCAL_RANK)
    # Forward passes under autocast; parameters, optimizer state, loss reductions and EMA stay fp32.
    # fp16 adds a dynamic loss scaler per network.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    sync_batchnorm: bool = False  # ddp: batch-norm statistics over all ranks (CUDA only)
    zero_stage: int = 0  # deepspeed: 0 (plain data parallel), 1 (optimizer state sharded), 2 (+ gradients)

    def validate(self) -> None:
        _check(self.zero_stage in (0, 1, 2), "engine.zero_stage", f"must be 0, 1 or 2 (got {self.zero_stage})")
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "engine.device",
               f"must be auto, cpu, cuda or cuda:N (got '{self.device}')")


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

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

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
    return _build(Config, data, "").validate()


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `a.b=value` overrides, type-check and validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError("", f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    for item in overrides:
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


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(key, f"must be one of {', '.join(map(str, args))}, got '{value}'{hint}")
        return value
    if origin is list:
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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
