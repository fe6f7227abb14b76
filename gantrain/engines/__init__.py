"""Engines by name: `engine.name` in the config picks one."""

from __future__ import annotations

from gantrain.config import EngineConfig
from gantrain.engines.base import Engine, Net


def make_engine(cfg: EngineConfig) -> Engine:
    from gantrain.engines.single import SingleEngine

    return SingleEngine(cfg.device)


__all__ = ["Engine", "Net", "make_engine"]
