"""One contiguous buffer for all of a model's parameters (and one for their gradients).

Mixing reads and writes a learner's parameters as one tensor, so the communication layer sends
one message per neighbour and combines with a handful of vector operations. The model's
parameters become views of the buffer, so writing the buffer writes the model; gradients
accumulate into views of a second buffer, so an optimiser can step the single `flat` parameter.
`extra` values after the parameters are mixed with them but never trained (for example the
observation normaliser's sufficient statistics, `normaliser = "mixed"`).
"""

from __future__ import annotations

import torch
from torch import nn


class FlatParameters:
    """Re-seats every parameter of `modules` into one buffer. Build optimisers on `.parameter`;
    the core mixes `.mixed` (the parameters, then `extra` values)."""

    def __init__(self, *modules: nn.Module, extra: int = 0, learns: bool = True) -> None:
        params = [p for module in modules for p in module.parameters()]
        if not params:
            raise ValueError("a model without parameters has nothing to mix")
        total = sum(p.numel() for p in params)
        first = params[0]
        mixed = torch.zeros(total + extra, dtype=first.dtype, device=first.device)
        offset = 0
        for p in params:
            mixed[offset : offset + p.numel()].copy_(p.detach().reshape(-1))
            offset += p.numel()
        self._views, self._total = params, total
        # Parameters that never learn (a behaviour policy copied from the learner) need no gradients.
        self._seat(mixed, torch.zeros(total, dtype=first.dtype, device=first.device) if learns else None)

    def reseat(self, mixed: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        """Move the buffers into `mixed` and `grad` (a learner block's rows of its stacked
        buffers), values kept: the model's parameters and gradients become views of them.
        Without `grad` the gradients stay where they are (in their own buffer, or none for
        parameters that do not learn)."""
        total, own = self._total, self.parameter.grad
        grad = own if grad is None else grad
        if mixed.shape != self.mixed.shape or (grad is not None and grad.shape != (total,)):
            shapes = f"{tuple(mixed.shape)} and {None if grad is None else tuple(grad.shape)}"
            raise ValueError(f"reseat: buffers of {shapes} for {self.mixed.numel()} values and {total} gradients")
        mixed.copy_(self.mixed)
        if own is not None and grad is not own:
            grad.copy_(own)
        self._seat(mixed, grad)

    def _seat(self, mixed: torch.Tensor, grad: torch.Tensor | None) -> None:
        """Make every parameter a view of `mixed` and its gradient a view of `grad` (None: no gradient)."""
        total = self._total
        data, offset = mixed[:total], 0
        for p in self._views:
            size = p.numel()
            p.data = data[offset : offset + size].view_as(p)
            p.grad = None if grad is None else grad[offset : offset + size].view_as(p)
            offset += size
        self.parameter = nn.Parameter(data, requires_grad=grad is not None)
        self.parameter.grad = grad
        self.mixed = mixed
        self.extra = mixed[total:]

    @property
    def data(self) -> torch.Tensor:
        """The buffer that holds every parameter (a prefix of `mixed`)."""
        return self.parameter.data

    @property
    def grad(self) -> torch.Tensor:
        return self.parameter.grad

    def zero_grad(self) -> None:
        self.parameter.grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradient to at most `max_norm`; returns the norm before clipping."""
        norm = float(torch.linalg.vector_norm(self.parameter.grad))
        if max_norm > 0 and norm > max_norm:
            self.parameter.grad.mul_(max_norm / (norm + 1e-6))
        return norm

    def check_views(self) -> None:
        """Fail loudly if autograd replaced a gradient instead of accumulating into the buffer."""
        storage = self.parameter.grad.untyped_storage().data_ptr()
        for p in self._views:
            if p.grad is None or p.grad.untyped_storage().data_ptr() != storage:
                raise RuntimeError("a parameter's gradient left the flat buffer (was zero_grad(set_to_none) used?)")
