"""Optimiser steps without torch.optim's per-call wrapper where nothing needs it.

A Diff-A2C, GALA or V-trace learner steps its optimiser once per update of 20–80 samples, so the
fixed Python cost around `torch.optim.RMSprop.step` (the wrapper torch puts on every optimiser's
`step` for profiler records and step hooks, the grouping of tensors, the checks for compilation and
graph capture) is a large share of an update: in a 9,155-parameter learner's loop on 2 CPU cores,
131 µs a step with `step()` and 74 µs with `lean_step`; in a block of 16 such learners, 255 and
131 µs (`python benchmarks/optimiser_step.py`, medians of 3 rounds).

`RMSprop` is a `torch.optim.RMSprop` (the same hyperparameters, state and `state_dict`, so
checkpoints load either way) whose `lean_step` does the plain case itself: no momentum, centring,
weight decay or maximising, a float learning rate, state made by a first step of torch's, no step
hooks and no profiler running. It applies torch's operations in torch's order, so every parameter
and statistic gets the same bits; anything else goes to `step()`. `step(optimizer)` is what the
learners call.

Imported where a learner is built or stepped (it imports torch; registering a plugin does not).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import optimizer as torch_optimizer


def step(optimizer: torch.optim.Optimizer) -> None:
    """One step of `optimizer`: `RMSprop.lean_step` for ours, `step()` for any other."""
    if isinstance(optimizer, RMSprop):
        optimizer.lean_step()
    else:
        optimizer.step()


def _plain(group: dict[str, Any]) -> bool:
    return not (
        group["momentum"]
        or group["centered"]
        or group["weight_decay"]
        or group["maximize"]
        or group["differentiable"]
        or group["capturable"]
        or torch.is_tensor(group["lr"])
    )


class RMSprop(torch.optim.RMSprop):
    """`torch.optim.RMSprop` with `lean_step`: its plain steps without torch.optim's wrapper,
    bit for bit the same as `step()`."""

    def lean_step(self) -> None:
        if not self._lean():
            self.step()  # torch makes the state (and refuses what it refuses) on a first step
            return
        with torch.no_grad():
            for group in self.param_groups:
                lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
                for param in group["params"]:
                    grad = param.grad
                    if grad is None:
                        continue
                    state = self.state[param]
                    state["step"] += 1
                    square_avg = state["square_avg"]
                    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                    param.addcdiv_(grad, square_avg.sqrt().add_(eps), value=-lr)

    def _lean(self) -> bool:
        """Whether this step is one `lean_step` takes itself: what `step()` would do beyond the
        arithmetic (hooks, profiler records, making state) is nothing."""
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or torch_optimizer._global_optimizer_pre_hooks
            or torch_optimizer._global_optimizer_post_hooks
            or torch.autograd.profiler._is_profiler_enabled
        ):
            return False
        for group in self.param_groups:
            if not _plain(group):
                return False
            for param in group["params"]:
                if param.grad is not None and (
                    not self.state[param] or param.grad.is_sparse or torch.is_complex(param)
                ):
                    return False
        return True
