"""The lean RMSprop step gives torch's bits, and falls back to torch's step where it must."""

from __future__ import annotations

import pytest
import torch

from plugins.algorithms.common import optimisers


def _pair(shape: tuple[int, ...], **settings: float) -> tuple[torch.nn.Parameter, torch.nn.Parameter, list]:
    torch.manual_seed(0)
    start = torch.randn(shape)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    return ours, theirs, [optimisers.RMSprop([ours], **settings), torch.optim.RMSprop([theirs], **settings)]


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


@pytest.mark.parametrize("shape", [(37,), (4, 9)])
def test_lean_steps_give_torchs_bits(shape: tuple[int, ...]) -> None:
    ours, theirs, optimizers = _pair(shape, lr=7e-4, alpha=0.99, eps=1e-5)
    _train([ours, theirs], optimizers, 40, lr_change_at=20)
    assert torch.equal(ours, theirs)
    mine, torchs = optimizers[0].state[ours], optimizers[1].state[theirs]
    assert torch.equal(mine["square_avg"], torchs["square_avg"])
    assert torch.equal(mine["step"], torchs["step"]) and float(mine["step"]) == 40


def test_a_strided_row_view_like_a_blocks_parameter() -> None:
    """A block's parameter and its gradient are views of wider rows: the same bits as torch's
    step on a contiguous copy."""
    rows, wide, wide_grad = torch.randn(3, 10), torch.zeros(3, 12), torch.zeros(3, 12)
    wide[:, :10] = rows
    strided, plain = torch.nn.Parameter(wide[:, :10]), torch.nn.Parameter(rows.clone())
    assert not strided.is_contiguous()
    lean, reference = optimisers.RMSprop([strided], lr=1e-2), torch.optim.RMSprop([plain], lr=1e-2)
    generator = torch.Generator().manual_seed(2)
    for _ in range(10):
        gradient = torch.randn(3, 10, generator=generator)
        wide_grad[:, :10] = gradient
        strided.grad, plain.grad = wide_grad[:, :10], gradient
        optimisers.step(lean)
        reference.step()
    assert torch.equal(strided, plain) and torch.equal(wide[:, :10], plain)


def test_settings_it_does_not_take_go_to_torch() -> None:
    """Momentum, centring and weight decay: torch's own step, so the same results still."""
    ours, theirs, optimizers = _pair((16,), lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3)
    _train([ours, theirs], optimizers, 10)
    assert torch.equal(ours, theirs)
    assert "momentum_buffer" in optimizers[0].state[ours]


def test_step_hooks_still_run() -> None:
    ours, _, optimizers = _pair((8,), lr=1e-2)
    calls: list[str] = []
    optimizers[0].register_step_post_hook(lambda *_: calls.append("post"))
    ours.grad = torch.ones(8)
    optimisers.step(optimizers[0])  # the first step: torch's
    optimisers.step(optimizers[0])  # with a hook: torch's too
    assert calls == ["post", "post"]


def test_checkpoints_load_either_way() -> None:
    ours, theirs, optimizers = _pair((6,), lr=1e-2)
    _train([ours, theirs], optimizers, 5)
    loaded = torch.optim.RMSprop([torch.nn.Parameter(ours.detach().clone())], lr=1e-2)
    loaded.load_state_dict(optimizers[0].state_dict())
    back = optimisers.RMSprop([torch.nn.Parameter(theirs.detach().clone())], lr=1e-2)
    back.load_state_dict(optimizers[1].state_dict())
    for copy, source in ((loaded, optimizers[0]), (back, optimizers[1])):
        copied, original = copy.state_dict(), source.state_dict()
        assert copied["param_groups"] == original["param_groups"]
        assert copied["state"].keys() == original["state"].keys() == {0}
        assert copied["state"][0].keys() == original["state"][0].keys() == {"step", "square_avg"}
        assert all(torch.equal(copied["state"][0][k], original["state"][0][k]) for k in ("step", "square_avg"))
