"""The engine interface: how gradients of one network are computed, reduced, scaled and applied.

The training loop talks to a `Net` per network (G, D) and to the `Engine` for process-level concerns
(ranks, precision, collectives). An engine knows nothing about GANs or model families; a model knows
nothing about engines.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Net:
    """One network with its optimizer and, for fp16, its own dynamic loss scaler.

    `module` is what the loop calls forward on when this network is trained (possibly a wrapper that
    reduces gradients, compiled under engine.compile); `uncompiled` is the same without torch.compile,
    for forwards whose input gradient is differentiated again (R1, R2, GP: compiled graphs have no double
    backward); `raw` is the plain nn.Module: state dicts, EMA source, and forward calls while the network
    is frozen (no gradient sync wanted then)."""

    def __init__(self, module: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler | None = None):
        self.module, self.raw, self.optimizer, self.scaler = module, raw, optimizer, scaler
        self.uncompiled = module

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    @property
    def for_double_backward(self) -> nn.Module:
        """What a loss calls forward on when it takes an input gradient of an intermediate result inside
        this network (path length: d images / d ws) and then backpropagates it: `uncompiled` (a compiled
        graph has no double backward) unless the wrapper's hooks break on that inner autograd.grad."""
        return self.uncompiled

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Context for micro-batches before the last one: accumulate locally, reduce nothing yet."""
        return contextlib.nullcontext()

    def loss_scale(self) -> float:
        """Factor the current backward multiplies losses by (1 without fp16): penalties that take
        gradients of outputs with respect to inputs divide it back out."""
        return self.scaler.get_scale() if self.scaler else 1.0

    def step(self) -> tuple[bool, torch.Tensor]:
        """Unscale, measure the gradient norm, apply, clear. Returns (applied, norm); with fp16 an
        overflow skips the update (and lowers the scale) instead of applying inf/NaN; without fp16 a
        non-finite gradient norm skips it too."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.raw.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if self.scaler:
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= before
        else:
            applied = bool(torch.isfinite(norm))
            if applied:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return applied, norm

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step can change, in a stable order: parameters, buffers, then optimizer state
        (which an optimizer creates at its first step)."""
        return [*self.raw.parameters(), *self.raw.buffers(), *optimizer_tensors(self.optimizer)]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [value for group in optimizer.param_groups for p in group["params"]
            for _, value in sorted(optimizer.state.get(p, {}).items()) if isinstance(value, torch.Tensor)]


class Engine(ABC):
    rank: int = 0
    world_size: int = 1
    device: torch.device
    precision: str = "fp32"
    compile: bool = False  # engine.compile: training forwards through torch.compile

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Forward passes run in this context: bf16/fp16 autocast, or nothing for fp32. Parameters,
        optimizer state, loss reductions and EMA stay fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def _compiled(self, net: Net) -> Net:
        """engine.compile: the training forward through torch.compile (graphs are built at first use, and
        again after a progressive stage changes the active blocks); `uncompiled` stays for penalties."""
        if self.compile:
            net.module = torch.compile(net.uncompiled)
        return net

    def _scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    @abstractmethod
    def setup(self, module: nn.Module, make_optimizer: OptimizerFactory) -> Net:
        """Place MODULE, build its optimizer over the placed parameters, wrap both."""

    def release(self, net: Net) -> None:
        """Let go of NET's wrapper (its gradient hooks) before the same parameters are wrapped again:
        growing models are re-wrapped at every stage change."""
        net.module = net.uncompiled = net.raw

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank if FLAG is true on any (stop requests must be agreed on)."""
        return flag

    def gather(self, obj: Any) -> list[Any]:
        """OBJ from every rank, in rank order (on every rank)."""
        return [obj]

    def close(self) -> None:
        """Release process-level resources (process groups); safe to call twice."""
