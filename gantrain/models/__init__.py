"""Model families by name. Each builder takes the model config and the data spec and returns (G, D)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gantrain.models.base import DataSpec, Discriminator, Generator

if TYPE_CHECKING:
    from gantrain.config import ModelConfig


def _dcgan(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    from gantrain.models.dcgan import DCGANDiscriminator, DCGANGenerator

    return (DCGANGenerator(spec, cfg.z_dim, cfg.channels, cfg.max_channels, cfg.conditional, cfg.norm),
            DCGANDiscriminator(spec, cfg.channels, cfg.max_channels, cfg.conditional, cfg.norm))


MODELS: dict[str, Callable[[ModelConfig, DataSpec], tuple[Generator, Discriminator]]] = {"dcgan": _dcgan}


def build(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    return MODELS[cfg.name](cfg, spec)


__all__ = ["DataSpec", "Discriminator", "Generator", "MODELS", "build"]
