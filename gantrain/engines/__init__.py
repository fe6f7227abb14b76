"""Engines by name: `engine.name` in the config picks one."""

from __future__ import annotations

import os

from gantrain.config import ConfigError, EngineConfig
from gantrain.engines.base import Engine, Net


def make_engine(cfg: EngineConfig) -> Engine:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if cfg.name == "single":
        if world > 1:
            raise ConfigError("engine.name", f"'single' cannot run in a group of {world} processes; use ddp")
        from gantrain.engines.single import SingleEngine

        return SingleEngine(cfg.device, cfg.precision)
    from gantrain.engines.ddp import DDPEngine

    return DDPEngine(cfg)


__all__ = ["Engine", "Net", "make_engine"]
