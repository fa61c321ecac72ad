"""A GPU learner's tensors cross gloo through pinned host buffers (`HostStaging`)."""

from __future__ import annotations

import pytest
import torch

from benchbase.comm.transports import HostStaging


def test_cpu_tensors_are_not_copied() -> None:
    params = torch.arange(5.0)
    assert HostStaging()(params) is params


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_of_several_sizes_each_get_a_buffer_of_their_own() -> None:
    """A learner stages its mixed buffer (parameters and normaliser statistics) for mixing and
    its parameters alone for the consensus distance: the second once failed with a size mismatch."""
    host = HostStaging()
    mixed = torch.arange(12.0, device="cuda")
    staged = host(mixed)
    assert staged.device.type == "cpu" and staged.is_pinned() and torch.equal(staged, mixed.cpu())
    parameters = mixed[:9]
    assert torch.equal(host(parameters), parameters.cpu())
    mixed.add_(1.0)
    assert host(mixed) is staged and torch.equal(staged, mixed.cpu())  # the same buffer, refreshed
