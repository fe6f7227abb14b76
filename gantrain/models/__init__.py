"""Model families by name. Each builder takes the model config and the data spec and returns (G, D);
`build` adds what every family shares (spectral normalization as a switch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gantrain.models.base import DataSpec, Discriminator, Generator
from gantrain.models.layers import DOutput, initialize, spectral_norm_all

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


def _stylegan2(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    from gantrain.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

    spec = DataSpec(spec.resolution, spec.channels, spec.num_classes if cfg.conditional else 0)
    return (StyleGAN2Generator(spec, cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.channel_base, cfg.max_channels,
                               cfg.conv_clamp, cfg.style_mixing, num_fp16_res=cfg.num_fp16_res, output=cfg.output),
            StyleGAN2Discriminator(spec, cfg.channel_base, cfg.max_channels, cfg.d_architecture,
                                   cfg.minibatch_group, cfg.minibatch_channels, cfg.conv_clamp,
                                   num_fp16_res=cfg.num_fp16_res))


def _biggan(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    from gantrain.models.biggan import BigGANDiscriminator, BigGANGenerator

    spec = DataSpec(spec.resolution, spec.channels, spec.num_classes if cfg.conditional else 0)
    attention = tuple(cfg.attention)
    return (BigGANGenerator(spec, cfg.z_dim, cfg.channels, cfg.shared_dim, cfg.hier, attention, cfg.bn_eps),
            BigGANDiscriminator(spec, cfg.channels, attention))


MODELS: dict[str, Callable[[ModelConfig, DataSpec], tuple[Generator, Discriminator]]] = {
    "dcgan": _dcgan, "progan": _progan, "mlp": _mlp, "dirac": _dirac, "stylegan2": _stylegan2, "biggan": _biggan}

# The model keys the original families read; a family that reads others declares its own full set in
# FAMILY_KEYS (what the HParams table lists, and which config checks apply to it).
COMMON_KEYS = ("name", "z_dim", "channels", "max_channels", "depth", "conditional", "conditioning", "norm",
               "spectral_norm", "minibatch", "minibatch_group", "minibatch_kernels", "resolution")
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "stylegan2": ("name", "z_dim", "w_dim", "mapping_layers", "channel_base", "max_channels", "conditional",
                  "spectral_norm", "d_architecture", "minibatch_group", "minibatch_channels", "conv_clamp",
                  "style_mixing", "num_fp16_res", "output", "resolution"),
    "biggan": ("name", "z_dim", "channels", "conditional", "spectral_norm", "sn_eps", "init", "shared_dim", "hier",
               "attention", "bn_eps", "resolution"),
}


def build(cfg: ModelConfig, spec: DataSpec) -> tuple[Generator, Discriminator]:
    G, D = MODELS[cfg.name](cfg, spec)
    initialize(G, cfg.init)
    initialize(D, cfg.init)
    if cfg.spectral_norm in ("g", "both"):
        spectral_norm_all(G, cfg.sn_eps)
    if cfg.spectral_norm in ("d", "both"):
        spectral_norm_all(D, cfg.sn_eps)
    return G, D


__all__ = ["COMMON_KEYS", "DOutput", "DataSpec", "Discriminator", "FAMILY_KEYS", "Generator", "MODELS", "build"]
