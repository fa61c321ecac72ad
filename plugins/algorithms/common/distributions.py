"""The policy's action distribution π(·|x), read off the actor's output: a categorical over logits
(`log_std` None) or a diagonal Gaussian around the means with a state-independent log-std.

Every learner acts, evaluates and computes its losses with these functions (plain tensor code:
`torch.distributions` costs too much in the acting loop). Shapes: outputs [..., A], one action
per leading index; `log_std` broadcasts against the outputs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from benchbase import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it

LOG_2PI = math.log(2 * math.pi)


def sample(actor_out: torch.Tensor, log_std: torch.Tensor | None) -> torch.Tensor:
    """Actions drawn from π (any leading shape)."""
    if log_std is not None:
        return actor_out + log_std.exp() * torch.randn_like(actor_out)
    # What `torch.multinomial(probs, 1)` computes, draw for draw from the same random stream
    # (argmax of p / q, q ~ Exp(1)), without its checks of the probabilities: they read two values
    # back at every draw (a device sync on a GPU) and took two thirds of its time on 8 simulators.
    # A learner whose parameters went non-finite fails at its gradient step instead.
    probs = torch.softmax(actor_out, dim=-1)
    return torch.argmax(probs / torch.empty_like(probs).exponential_(), dim=-1)


def greedy(actor_out: torch.Tensor, log_std: torch.Tensor | None) -> torch.Tensor:
    """π's most likely actions: the Gaussian means, or the largest logits."""
    return actor_out if log_std is not None else actor_out.argmax(dim=-1)


def log_prob_entropy(
    actor_out: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(a|x) and H[π(·|x)], one of each per action."""
    if log_std is None:
        log_probs = torch.log_softmax(actor_out, dim=-1)
        log_prob = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return log_prob, -(log_probs.exp() * log_probs).sum(-1)
    log_prob = (-0.5 * ((actions - actor_out) / log_std.exp()).pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)
    # The Gaussian's entropy does not depend on x: computed on log_std's own shape, then repeated.
    entropy = (0.5 + 0.5 * LOG_2PI + log_std).sum(-1).expand(actor_out.shape[:-1])
    return log_prob, entropy


def kl_divergence(
    p_out: torch.Tensor, p_log_std: torch.Tensor | None, q_out: torch.Tensor, q_log_std: torch.Tensor | None
) -> torch.Tensor:
    """KL(p ‖ q) per action for two outputs (categorical logits or diagonal Gaussians)."""
    if p_log_std is None:
        p_log = torch.log_softmax(p_out, dim=-1)
        q_log = torch.log_softmax(q_out, dim=-1)
        return (p_log.exp() * (p_log - q_log)).sum(-1)
    p_log_std, q_log_std = p_log_std.expand_as(p_out), q_log_std.expand_as(q_out)
    ratio = ((p_log_std - q_log_std) * 2).exp()  # σ_p² / σ_q²
    mean_term = ((p_out - q_out) / q_log_std.exp()).pow(2)
    return (q_log_std - p_log_std + 0.5 * (ratio + mean_term - 1)).sum(-1)
