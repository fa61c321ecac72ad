"""The lean RMSprop and Adam steps give torch's bits, and fall back to torch's step where they must."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

from plugins.algorithms.common import optimisers

# Ours and torch's of each kind, with the state each keeps per parameter.
KINDS = {
    "rmsprop": (optimisers.RMSprop, torch.optim.RMSprop, {"lr": 7e-4, "alpha": 0.99, "eps": 1e-5}, {"square_avg"}),
    "adam": (optimisers.Adam, torch.optim.Adam, {"lr": 1e-3, "eps": 1e-5}, {"exp_avg", "exp_avg_sq"}),
}


def _pair(kind: str, shape: tuple[int, ...], **settings: Any) -> tuple[torch.nn.Parameter, torch.nn.Parameter, list]:
    ours_type, torchs_type, defaults, _ = KINDS[kind]
    torch.manual_seed(0)
    start = torch.randn(shape)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    settings = defaults | settings
    return ours, theirs, [ours_type([ours], **settings), torchs_type([theirs], **settings)]


def _train(params: list[torch.nn.Parameter], optimizers: list, steps: int, lr_change_at: int | None = None) -> None:
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        gradient = torch.randn(params[0].shape, generator=generator) * 10.0 ** (step % 5 - 3)
        if step == lr_change_at:
            for optimizer in optimizers:
                optimizer.param_groups[0]["lr"] = 3e-4
        for param in params:
            param.grad = gradient.clone()
        optimisers.step(optimizers[0])
        optimizers[1].step()


def _same_state(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer, kind: str) -> bool:
    mine, torchs = next(iter(ours.state.values())), next(iter(theirs.state.values()))
    return mine.keys() == torchs.keys() and all(
        torch.equal(mine[key], torchs[key]) for key in KINDS[kind][3] | {"step"}
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(37,), (4, 9)])
def test_lean_steps_give_torchs_bits(kind: str, shape: tuple[int, ...]) -> None:
    ours, theirs, optimizers = _pair(kind, shape)
    _train([ours, theirs], optimizers, 40, lr_change_at=20)
    assert torch.equal(ours, theirs)
    assert _same_state(*optimizers, kind) and float(optimizers[0].state[ours]["step"]) == 40


@pytest.mark.parametrize("kind", KINDS)
def test_lean_steps_are_taken(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plain step is a lean one (not `step()`), the first included: it makes the state as
    torch's would (test_lean_steps_give_torchs_bits compares every step's bits)."""
    ours, theirs, optimizers = _pair(kind, (5,))
    calls: list[int] = []
    torchs_step = type(optimizers[0]).step
    monkeypatch.setattr(type(optimizers[0]), "step", lambda self: calls.append(1) or torchs_step(self))
    _train([ours, theirs], optimizers, 4)
    assert calls == [] and torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_a_strided_row_view_like_a_blocks_parameter(kind: str) -> None:
    """A block's parameter and its gradient are views of wider rows: the same bits as torch's
    step on a contiguous copy."""
    ours_type, torchs_type, defaults, _ = KINDS[kind]
    rows, wide, wide_grad = torch.randn(3, 10), torch.zeros(3, 12), torch.zeros(3, 12)
    wide[:, :10] = rows
    strided, plain = torch.nn.Parameter(wide[:, :10]), torch.nn.Parameter(rows.clone())
    assert not strided.is_contiguous()
    lean, reference = ours_type([strided], **defaults), torchs_type([plain], **defaults)
    generator = torch.Generator().manual_seed(2)
    for _ in range(10):
        gradient = torch.randn(3, 10, generator=generator)
        wide_grad[:, :10] = gradient
        strided.grad, plain.grad = wide_grad[:, :10], gradient
        optimisers.step(lean)
        reference.step()
    assert torch.equal(strided, plain) and torch.equal(wide[:, :10], plain)


@pytest.mark.parametrize(
    ("kind", "settings", "made_by_torch"),
    [
        ("rmsprop", {"momentum": 0.9, "centered": True, "weight_decay": 1e-3}, "momentum_buffer"),
        ("rmsprop", {"foreach": True}, None),
        ("adam", {"amsgrad": True}, "max_exp_avg_sq"),
        ("adam", {"weight_decay": 1e-2, "decoupled_weight_decay": True}, None),
        ("adam", {"maximize": True}, None),
        ("adam", {"foreach": True}, None),
    ],
)
def test_settings_it_does_not_take_go_to_torch(
    kind: str, settings: dict, made_by_torch: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings whose step torch computes otherwise: every step is torch's own, so the same results still."""
    ours, theirs, optimizers = _pair(kind, (16,), **settings)
    calls: list[int] = []
    torchs_step = type(optimizers[0]).step
    monkeypatch.setattr(type(optimizers[0]), "step", lambda self: calls.append(1) or torchs_step(self))
    _train([ours, theirs], optimizers, 10)
    assert torch.equal(ours, theirs)
    assert made_by_torch is None or made_by_torch in optimizers[0].state[ours]
    assert len(calls) == 10


@pytest.mark.parametrize("kind", KINDS)
def test_step_hooks_still_run(kind: str) -> None:
    ours, _, optimizers = _pair(kind, (8,))
    calls: list[str] = []
    optimizers[0].register_step_post_hook(lambda *_: calls.append("post"))
    ours.grad = torch.ones(8)
    optimisers.step(optimizers[0])  # with a hook: torch's step
    optimisers.step(optimizers[0])
    assert calls == ["post", "post"]


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_load_either_way(kind: str) -> None:
    ours_type, torchs_type, defaults, _ = KINDS[kind]
    ours, theirs, optimizers = _pair(kind, (6,))
    _train([ours, theirs], optimizers, 5)
    loaded = torchs_type([torch.nn.Parameter(ours.detach().clone())], **defaults)
    loaded.load_state_dict(optimizers[0].state_dict())
    back = ours_type([torch.nn.Parameter(theirs.detach().clone())], **defaults)
    back.load_state_dict(optimizers[1].state_dict())
    for copy, source in ((loaded, optimizers[0]), (back, optimizers[1])):
        copied, original = copy.state_dict(), source.state_dict()
        assert copied["param_groups"] == original["param_groups"]
        assert copied["state"].keys() == original["state"].keys() == {0}
        assert _same_state(copy, source, kind)


def test_a_learner_never_imports_torch_dynamo() -> None:
    """torch.optim's wrappers import torch._dynamo on their first call (1.3 s in every learner
    process and `bench` command); ours make, step, save and load an optimiser without it."""
    script = """
import sys, torch
from plugins.algorithms.common import optimisers
for kind in (optimisers.RMSprop, optimisers.Adam):
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = kind([param], lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        param.grad = torch.ones(4)
        optimisers.step(optimizer)
    optimizer.load_state_dict(optimizer.state_dict())
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
"""
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
