"""Engines by name: `engine.name` in the config picks one."""

from __future__ import annotations

import os

from gantrain.config import Config, ConfigError
from gantrain.engines.base import Engine, Net


def make_engine(cfg: Config) -> Engine:
    world = int(os.environ.get("WORLD_SIZE", 1))
    name = cfg.engine.name
    if name == "single":
        if world > 1:
            raise ConfigError("engine.name", f"'single' cannot run in a group of {world} processes; use ddp")
        from gantrain.engines.single import SingleEngine

        return SingleEngine(cfg.engine.device, cfg.engine.precision, cfg.engine.compile)
    if name == "deepspeed":
        from gantrain.engines.deepspeed import DeepSpeedEngine

        return DeepSpeedEngine(cfg.engine, cfg.train)
    from gantrain.engines.ddp import DDPEngine

    return DDPEngine(cfg.engine)


__all__ = ["Engine", "Net", "make_engine"]
