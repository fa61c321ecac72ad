"""The interface every transport implements, and host staging for GPU buffers.

A transport carries messages between learners, named by their ranks; it never combines them
(that is a mixing rule's job, `benchbase.comm.rules`). Synchronous rules call `exchange` once per
iteration; asynchronous ones `publish` their messages and read each in-peer's `newest`. Nothing
here assumes one learner per process: a message goes from one rank to another, and a process
that hosts a block of learners sends through the same transports only what its learners'
out-neighbours in other blocks read (`benchbase.comm.block_exchange`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class Peers(Protocol):
    """Who ever sends to whom: a mixing plan between learners (`benchbase.comm.mixing_plan`), or
    the graph between learner blocks (`benchbase.comm.block_exchange.BlockGraph`)."""

    def in_peers(self, node: int) -> list[int]: ...

    def out_peers(self, node: int) -> list[int]: ...


class Transport:
    """Carries one learner's messages to and from its neighbours; counts what it sends."""

    def exchange(
        self, message: torch.Tensor, iteration: int, send_to: list[int], receive_from: list[int], silent: list[int]
    ) -> dict[int, torch.Tensor]:
        """Send `message` to `send_to` and receive this iteration's message of every rank in
        `receive_from` (by rank; the buffers are reused by the next exchange). `silent` are
        in-neighbours known to skip this iteration (unreliable links): nothing comes from them."""
        raise NotImplementedError(f"{type(self).__name__} does not exchange messages synchronously")

    def publish(self, content: torch.Tensor, iteration: int, send_to: list[int]) -> None:
        """Asynchronous: make `content` of `iteration` the newest message for each of `send_to`."""
        raise NotImplementedError(f"{type(self).__name__} does not publish asynchronously")

    def newest(self, peer: int, min_iteration: int) -> tuple[torch.Tensor, float] | None:
        """Asynchronous: a copy of `peer`'s newest message to this learner and its iteration, once
        it is from iteration ≥ `min_iteration` or the peer has finished (None: it never sent one).
        A negative `min_iteration` (the learners' common starting point) never waits."""
        raise NotImplementedError(f"{type(self).__name__} does not read asynchronously")

    def received_in_background(self) -> int:
        """Messages received by background receivers (not in the shared counters)."""
        return 0

    def finish(self, final_message: Callable[[int], torch.Tensor]) -> None:
        """Tell the out-peers nothing more comes (`final_message(receiver)` is what a marker
        carries, where the transport sends one) and wait until the in-peers have said the same."""

    def release(self) -> None:
        """Free what the transport holds; every send has completed (after `finish`, or after a failure)."""


class HostStaging:
    """gloo exchanges CPU tensors: a GPU learner's buffer is staged through pinned memory, one
    buffer for each size staged (a learner stages its mixed buffer, parameters and normaliser
    statistics, for mixing, and its parameters alone for the consensus measurements)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.Size, torch.dtype], torch.Tensor] = {}

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        if params.device.type == "cpu":
            return params
        key = (params.shape, params.dtype)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(params.shape, dtype=params.dtype, pin_memory=True)
        return self._buffers[key].copy_(params)
