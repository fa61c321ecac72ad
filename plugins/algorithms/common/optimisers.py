"""Optimiser steps without torch.optim's per-call wrapper where nothing needs it.

A learner steps its optimiser once per update of 20–80 samples (Diff-A2C, GALA, V-trace) or per
minibatch (Diff-PPO), so the fixed Python cost around torch.optim's `step` (the wrapper torch puts
on every optimiser's `step` for profiler records and step hooks, the grouping of tensors, the
checks for compilation and graph capture) is a large share of a step: in a 9,155-parameter
Diff-A2C learner's loop on 2 CPU cores, 131 µs a step with `step()` and 74 µs with `lean_step`;
in a block of 16 such learners, 255 and 131 µs (`python benchmarks/optimiser_step.py`, medians
of 3 rounds; `--adam` times Diff-PPO's Adam the same way).

`RMSprop` and `Adam` are torch.optim's (the same hyperparameters, state and `state_dict`, so
checkpoints load either way) with a `lean_step` that does the plain case itself: what torch's
single-tensor path does (on a CPU by default, or with `foreach=False`) for a float learning rate
and no weight decay or maximising (nor momentum and centring for RMSprop, AMSGrad for Adam), no
step hooks and no profiler running. It makes a parameter's state as torch's first step would and
applies torch's operations in torch's order, so every parameter and statistic gets the same bits;
anything else (a GPU's multi-tensor default among them) goes to `step()`. `step(optimizer)` is
what the learners call. Neither imports torch._dynamo, which torch.optim's own methods do on their
first call (`_without_dynamo`).

Imported where a learner is built or stepped (it imports torch; registering a plugin does not).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import optimizer as torch_optimizer


def step(optimizer: torch.optim.Optimizer) -> None:
    """One step of `optimizer`: `lean_step` for ours, `step()` for any other."""
    if isinstance(optimizer, _LeanStep):
        optimizer.lean_step()
    else:
        optimizer.step()


def _single_tensor_path(group: dict[str, Any]) -> bool:
    """Whether torch's `step()` takes its single-tensor path for `group` with plain settings:
    not fused, not differentiable or capturable, no weight decay or maximising, a float learning
    rate, and foreach off (torch's default for CPU tensors)."""
    if group.get("fused") or group["differentiable"] or group["capturable"] or group["weight_decay"]:
        return False
    if group["maximize"] or torch.is_tensor(group["lr"]):
        return False
    foreach = group["foreach"]
    return foreach is False or (foreach is None and all(p.device.type == "cpu" for p in group["params"]))


def _lean(optimizer: torch.optim.Optimizer, plain: Callable[[dict[str, Any]], bool]) -> bool:
    """Whether `optimizer`'s next step is one its `lean_step` takes itself: what `step()` would
    do beyond the arithmetic and making state (hooks, profiler records) is nothing, every group is
    `plain` for its kind of optimiser, and no gradient is sparse or complex."""
    if (
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or torch_optimizer._global_optimizer_pre_hooks
        or torch_optimizer._global_optimizer_post_hooks
        or torch.autograd.profiler._is_profiler_enabled
    ):
        return False
    for group in optimizer.param_groups:
        if not (_single_tensor_path(group) and plain(group)):
            return False
        for param in group["params"]:
            if param.grad is not None and (param.grad.is_sparse or torch.is_complex(param)):
                return False
    return True


def _without_dynamo(method: Callable[..., Any]) -> Callable[..., Any]:
    """torch.optim's `method` without its `torch._disable_dynamo` wrapper while torch._dynamo is not
    loaded: the wrapper's first call imports it (1.3 s, in every learner process), only to keep
    torch.compile out of a function that nothing here compiles. Once something has loaded it,
    torch's wrapped method."""
    undecorated = getattr(method, "__wrapped__", method)

    def call(*args: Any, **kwargs: Any) -> Any:
        return (method if "torch._dynamo" in sys.modules else undecorated)(*args, **kwargs)

    return call


class _LeanStep:
    """What the lean optimisers share: `lean_step` checks, makes a parameter's state on its first
    step as torch's `_init_group` does (the kind's `_new_state`), counts the step and hands each
    parameter with a gradient to the kind's `_update`; what it does not take goes to `step()`."""

    add_param_group = _without_dynamo(torch.optim.Optimizer.add_param_group)
    state_dict = _without_dynamo(torch.optim.Optimizer.state_dict)
    load_state_dict = _without_dynamo(torch.optim.Optimizer.load_state_dict)
    zero_grad = _without_dynamo(torch.optim.Optimizer.zero_grad)

    def lean_step(self) -> None:
        if not _lean(self, self._plain):
            self.step()
            return
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        state = self.state[param]
                        if not state:
                            self._new_state(state, param)
                        state["step"] += 1
                        self._update(group, param, param.grad, state)


class RMSprop(_LeanStep, torch.optim.RMSprop):
    """`torch.optim.RMSprop` with `lean_step`: its plain steps without torch.optim's wrapper,
    bit for bit the same as `step()`."""

    @staticmethod
    def _plain(group: dict[str, Any]) -> bool:
        return not (group["momentum"] or group["centered"])

    @staticmethod
    def _new_state(state: dict[str, Any], param: torch.Tensor) -> None:
        state["step"] = torch.zeros((), dtype=torch_optimizer._get_scalar_dtype())
        state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    @staticmethod
    def _update(group: dict[str, Any], param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        alpha = group["alpha"]
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        param.addcdiv_(grad, square_avg.sqrt().add_(group["eps"]), value=-group["lr"])


class Adam(_LeanStep, torch.optim.Adam):
    """`torch.optim.Adam` with `lean_step`: its plain steps without torch.optim's wrapper, bit
    for bit the same as `step()`."""

    @staticmethod
    def _plain(group: dict[str, Any]) -> bool:
        return not group["amsgrad"] and not any(torch.is_tensor(beta) for beta in group["betas"])

    @staticmethod
    def _new_state(state: dict[str, Any], param: torch.Tensor) -> None:
        state["step"] = torch.zeros((), dtype=torch_optimizer._get_scalar_dtype())
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    @staticmethod
    def _update(group: dict[str, Any], param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        step = state["step"].item()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # The bias corrections as torch's single-tensor step computes them: Python floats. The
        # division in place: the same bits as torch's, one temporary copy of the moments fewer.
        step_size = group["lr"] / (1 - beta1**step)
        denom = exp_avg_sq.sqrt().div_((1 - beta2**step) ** 0.5).add_(group["eps"])
        param.addcdiv_(exp_avg, denom, value=-step_size)
