"""The engine interface: how gradients of one network are computed, reduced and applied.

The training loop talks to a `Net` per network (G, D) and to the `Engine` for process-level concerns.
An engine knows nothing about GANs or model families; a model knows nothing about engines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn


class Net(ABC):
    """One network with its optimizer. `module` is what the loop calls forward on (possibly a wrapper);
    `raw` is the plain nn.Module (state dicts, EMA source, requires_grad switching)."""

    module: nn.Module
    raw: nn.Module
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def step(self) -> None:
        """Apply the accumulated gradients and clear them."""

    @abstractmethod
    def no_sync(self) -> AbstractContextManager:
        """Context for micro-batches before the last one: accumulate locally, reduce nothing yet."""

    def grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.raw.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.nn.utils.get_total_norm(grads)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class Engine(ABC):
    rank: int = 0
    world_size: int = 1
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def setup(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> Net: ...

    @abstractmethod
    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None:
        """Release process-level resources (process groups); safe to call twice."""
