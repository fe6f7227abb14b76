"""Model families by name. Each builder takes the model config and the data spec and returns (G, D);
`build` adds what every family shares (spectral normalization as a switch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gantrain.models.base import DataSpec, Discriminator, Generator
from gantrain.models.layers import DOutput, spectral_norm_all

if TYPE_CHECKING:
    from gantrain.config import ModelConfig


def _dcgan(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    from gantrain.models.dcgan import DCGANDiscriminator, DCGANGenerator

    return (DCGANGenerator(spec, cfg.z_dim, cfg.channels, cfg.max_channels, cfg.conditional, cfg.norm),
            DCGANDiscriminator(spec, cfg.channels, cfg.max_channels, cfg.conditional, cfg.norm, cfg.conditioning,
                               cfg.minibatch, cfg.minibatch_group, cfg.minibatch_kernels))


def _progan(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    from gantrain.models.progan import ProGANDiscriminator, ProGANGenerator

    return (ProGANGenerator(spec, cfg.z_dim, cfg.channels, cfg.max_channels, cfg.conditional),
            ProGANDiscriminator(spec, cfg.channels, cfg.max_channels, cfg.conditional, cfg.conditioning,
                                cfg.minibatch, cfg.minibatch_group, cfg.minibatch_kernels))


def _mlp(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    from gantrain.models.toy import MLPDiscriminator, MLPGenerator

    return (MLPGenerator(spec, cfg.z_dim, cfg.channels, cfg.depth, cfg.conditional),
            MLPDiscriminator(spec, cfg.channels, cfg.depth, cfg.conditional, cfg.conditioning, cfg.minibatch,
                             cfg.minibatch_group, cfg.minibatch_kernels))


def _dirac(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    from gantrain.models.toy import DiracDiscriminator, DiracGenerator

    return DiracGenerator(spec, cfg.z_dim), DiracDiscriminator(spec)


MODELS: dict[str, Callable[[ModelConfig, DataSpec], tuple[Generator, Discriminator]]] = {
    "dcgan": _dcgan, "progan": _progan, "mlp": _mlp, "dirac": _dirac}


def build(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    G, D = MODELS[cfg.name](cfg, spec)
    if cfg.spectral_norm in ("g", "both"):
        spectral_norm_all(G)
    if cfg.spectral_norm in ("d", "both"):
        spectral_norm_all(D)
    return G, D


__all__ = ["DOutput", "DataSpec", "Discriminator", "Generator", "MODELS", "build"]
