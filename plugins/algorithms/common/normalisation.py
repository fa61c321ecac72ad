"""Observation normalisation and reward scaling.

Observation statistics (`normaliser`):
- "local": each learner keeps its own running mean and variance (the Diff-DAC code's choice).
  On a multitask family the learners then feed the shared parameters differently scaled inputs.
- "mixed": the statistics are combined with the neighbours like the parameters, count-weighted
  (`MixedStatistics`), so the learners converge on one scaling, that of the network's data.
- "off": raw observations.
Reward statistics always stay local. Both are checkpointed with the learner.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from benchbase import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")  # loads on first use: registering the plugin does not need it

NormaliserMode = Literal["mixed", "local", "off"]
INITIAL_COUNT = 1e-4  # statistics start as mean 0, variance 1 with this weight


def combined(
    mean: Any, var: Any, count: Any, batch_mean: Any, batch_var: Any, batch_count: int
) -> tuple[Any, Any, Any]:
    """(mean, variance, count) of running statistics after a batch (the parallel-variance update);
    element by element, so one learner's statistics or a block's row per learner."""
    delta = batch_mean - mean
    total = count + batch_count
    correction = delta**2 * count * batch_count / total
    return mean + delta * batch_count / total, (var * count + batch_var * batch_count + correction) / total, total


def sums_of(rows: np.ndarray) -> np.ndarray:
    """Sufficient statistics (n, Σx, Σx²) of float64 rows [..., n, d], along the last axis: one
    learner's batch gives [1 + 2d], a block's [K, n, d] one row per learner."""
    counts = np.full((*rows.shape[:-2], 1), rows.shape[-2], dtype=np.float64)
    return np.concatenate([counts, rows.sum(axis=-2), (rows**2).sum(axis=-2)], axis=-1)


def moments_from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, variance) of sufficient statistics [..., 1 + 2d] (`sums_of`'s layout)."""
    dim = (sums.shape[-1] - 1) // 2
    count = np.maximum(sums[..., :1], INITIAL_COUNT)
    mean = sums[..., 1 : 1 + dim] / count
    var = np.maximum(sums[..., 1 + dim :] / count - mean**2, 0.0)
    return count[..., 0], mean, var


def scaling(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float32 mean and 1/std that normalise observations with these statistics."""
    return mean.astype(np.float32), (1.0 / np.sqrt(var + 1e-8)).astype(np.float32)


def normalised(raw: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, clip: float) -> np.ndarray:
    """(raw − mean) / std clipped to ±clip, float32 whatever the env gives (Gymnasium's MuJoCo
    envs give float64)."""
    return np.clip((raw - mean) * inv_std, -clip, clip).astype(np.float32, copy=False)


def discounted_returns_so_far(
    discounted: np.ndarray, rewards: np.ndarray, ended: np.ndarray, gamma: float
) -> np.ndarray:
    """Each simulator's running discounted return after every step of `rewards` [T, …], restarted
    where `ended`; `discounted` (the running return before the rollout) is updated in place."""
    returns = np.empty_like(rewards, dtype=np.float64)
    for t in range(rewards.shape[0]):
        discounted *= gamma
        discounted += rewards[t]
        returns[t] = discounted
        discounted[ended[t]] = 0.0
    return returns


class RunningMeanStd:
    """Running mean and variance over batches (parallel-variance update)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.shape = shape
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = INITIAL_COUNT

    def update(self, batch: np.ndarray) -> None:
        self.mean, self.var, self.count = combined(
            self.mean, self.var, self.count, batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        )

    def read(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, mean, variance)."""
        return self.count, self.mean, self.var

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = np.array(state["mean"]), np.array(state["var"]), float(state["count"])


class MixedStatistics:
    """Running mean and variance held as sufficient statistics (n, Σx, Σx²) in `values`, a float
    tensor the core mixes with the parameters (the tail of the learner's mixed buffer).

    A mix replaces each learner's values by a weighted sum of its neighbours', and a weighted sum
    of sufficient statistics is the count-weighted combination of their means and variances;
    diffusion and push-sum alike then drive every learner to the statistics of all the learners'
    data. Each learner adds its own observations between mixes. The sums are accumulated in
    float64 per batch and stored in the buffer's float32.
    """

    def __init__(self, values: torch.Tensor, shape: tuple[int, ...]) -> None:
        self.values = values
        self.shape = shape
        self.dim = math.prod(shape)
        if values.numel() != self.size(shape):
            raise ValueError(f"mixed statistics of shape {shape} need {self.size(shape)} values, got {values.numel()}")
        self._set(INITIAL_COUNT, np.zeros(shape), np.ones(shape))

    @staticmethod
    def size(shape: tuple[int, ...]) -> int:
        return 1 + 2 * math.prod(shape)

    def _set(self, count: float, mean: np.ndarray, var: np.ndarray) -> None:
        mean, var = mean.reshape(-1), var.reshape(-1)
        sums = np.concatenate([[count], count * mean, count * (var + mean**2)])
        self.values.copy_(torch.from_numpy(sums))

    def read(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, mean, variance)."""
        count, mean, var = moments_from_sums(self.values.detach().to("cpu", torch.float64).numpy())
        return float(count), mean.reshape(self.shape), var.reshape(self.shape)

    @property
    def count(self) -> float:
        return self.read()[0]

    @property
    def mean(self) -> np.ndarray:
        return self.read()[1]

    @property
    def var(self) -> np.ndarray:
        return self.read()[2]

    def update(self, batch: np.ndarray) -> None:
        increment = sums_of(batch.reshape(batch.shape[0], -1).astype(np.float64))
        self.values.add_(torch.from_numpy(increment).to(self.values))

    def state_dict(self) -> dict:
        count, mean, var = self.read()
        return {"mean": mean, "var": var, "count": count, "sums": self.values.detach().to("cpu", copy=True)}

    def load_state_dict(self, state: dict) -> None:
        """Exactly the saved sums where there are some (a "mixed" checkpoint); otherwise (a "local"
        one) the saved mean, variance and count as sums."""
        if "sums" in state and state["sums"].numel() == self.values.numel():
            self.values.copy_(state["sums"].to(self.values))
        else:
            self._set(float(state["count"]), np.asarray(state["mean"]), np.asarray(state["var"]))


class ObservationNormaliser:
    """(obs − mean) / std, clipped to ±clip. Statistics are refreshed once per rollout (and, when
    mixed, after every mix: `refresh`). `mixed_values`: the mixed buffer's tail, for "mixed"."""

    def __init__(
        self,
        shape: tuple[int, ...],
        mode: NormaliserMode,
        clip: float = 10.0,
        mixed_values: torch.Tensor | None = None,
    ) -> None:
        self.mode = mode
        self.enabled = mode != "off"
        self.clip = clip
        if mode == "mixed":
            if mixed_values is None:
                raise ValueError('normaliser "mixed" needs the mixed buffer\'s values for its statistics')
            self.stats: RunningMeanStd | MixedStatistics = MixedStatistics(mixed_values, shape)
        else:
            self.stats = RunningMeanStd(shape)
        self.refresh()

    def refresh(self) -> None:
        """Read the statistics (mixed ones change under the normaliser at every mix)."""
        if not self.enabled:
            return
        _, mean, var = self.stats.read()
        self._mean, self._inv_std = scaling(mean, var)

    def update(self, raw_batch: np.ndarray) -> None:
        if self.enabled:
            self.stats.update(raw_batch.reshape(-1, *self.stats.shape))
            self.refresh()

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self.refresh()

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return raw.astype(np.float32, copy=False)
        return normalised(raw, self._mean, self._inv_std, self.clip)


class RewardScaler:
    """Divides rewards by the running std of each simulator's discounted return (clip ±clip)."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float = 10.0) -> None:
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.stats = RunningMeanStd(())
        self.discounted = np.zeros(num_envs, dtype=np.float64)

    def scale(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """Scale a rollout's rewards [T, P]; `ended[t]` marks episodes that ended at step t."""
        if not self.enabled:
            return rewards
        returns = discounted_returns_so_far(self.discounted, rewards, ended, self.gamma)
        self.stats.update(returns.reshape(-1))
        return np.clip(rewards / np.sqrt(self.stats.var + 1e-8), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {**self.stats.state_dict(), "discounted": self.discounted.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self.discounted = np.array(state["discounted"])


class StackedNormalisers:
    """K learners' observation normalisers applied at once (a learner block): each learner's
    statistics normalise its rows of [K, P, obs], and each learner's raw batch updates its own.

    "mixed" statistics are rows of the block's stacked buffer (`mixed_rows` [K, 1 + 2·obs]), read
    and updated for every learner in one operation; "local" ones stay each learner's
    `RunningMeanStd`, updated one learner at a time. The arithmetic is the learners' own, so a
    block normalises exactly as its learners would alone."""

    def __init__(self, normalisers: list[ObservationNormaliser], mixed_rows: torch.Tensor | None) -> None:
        self.normalisers = normalisers
        self.mode = normalisers[0].mode
        self.clip = normalisers[0].clip
        self.mixed_rows = mixed_rows
        if self.mode == "mixed" and mixed_rows is None:
            raise ValueError('"mixed" statistics need the block\'s rows of them')
        self.refresh()

    def refresh(self) -> None:
        """Re-read every learner's statistics (after a mix, an update or a checkpoint load)."""
        if self.mode == "off":
            return
        if self.mode == "mixed":
            _, mean, var = moments_from_sums(self.mixed_rows.detach().to("cpu", torch.float64).numpy())  # type: ignore[union-attr]
        else:
            mean = np.stack([normaliser.stats.read()[1].reshape(-1) for normaliser in self.normalisers])
            var = np.stack([normaliser.stats.read()[2].reshape(-1) for normaliser in self.normalisers])
        mean, inv_std = scaling(mean, var)
        self._mean, self._inv_std = mean[:, None, :], inv_std[:, None, :]  # broadcast over simulators

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Normalised float32 [K, P, obs] of raw [K, P, obs]."""
        if self.mode == "off":
            return raw.astype(np.float32, copy=False)
        return normalised(raw, self._mean, self._inv_std, self.clip)

    def update(self, raw_batch: np.ndarray) -> None:
        """Add each learner's raw observations [T, K, P, obs] to its statistics."""
        if self.mode == "off":
            return
        if self.mode == "mixed":
            learners = raw_batch.shape[1]
            rows = raw_batch.swapaxes(0, 1).reshape(learners, -1, raw_batch.shape[-1]).astype(np.float64)
            increments = sums_of(rows)  # one row per learner
            self.mixed_rows.add_(torch.from_numpy(increments).to(self.mixed_rows))  # type: ignore[union-attr]
        else:
            for k, normaliser in enumerate(self.normalisers):
                normaliser.update(raw_batch[:, k])
        self.refresh()


class StackedRewardScalers:
    """K learners' reward scalers applied at once: each divides its rewards by the running std of
    its own simulators' discounted returns, as `RewardScaler` does. The running statistics live
    here while the block trains; `save_to`/`load_from` move learner k's to and from its own
    `RewardScaler` (checkpoints)."""

    def __init__(self, scalers: list[RewardScaler]) -> None:
        first = scalers[0]
        self.enabled, self.gamma, self.clip = first.enabled, first.gamma, first.clip
        self.discounted = np.stack([scaler.discounted for scaler in scalers])  # [K, P]
        self.count = np.array([scaler.stats.count for scaler in scalers], dtype=np.float64)
        self.mean = np.array([np.asarray(scaler.stats.mean).item() for scaler in scalers])
        self.var = np.array([np.asarray(scaler.stats.var).item() for scaler in scalers])

    def scale(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """Scale rewards [T, K, P]; `ended[t]` marks the episodes that ended at step t."""
        if not self.enabled:
            return rewards
        returns = discounted_returns_so_far(self.discounted, rewards, ended, self.gamma)
        batch = returns.swapaxes(0, 1).reshape(len(self.count), -1)  # each learner's returns
        self.mean, self.var, self.count = combined(
            self.mean, self.var, self.count, batch.mean(axis=1), batch.var(axis=1), batch.shape[1]
        )
        scale = np.sqrt(self.var + 1e-8)[None, :, None]
        return np.clip(rewards / scale, -self.clip, self.clip).astype(np.float32)

    def save_to(self, k: int, scaler: RewardScaler) -> None:
        scaler.stats.mean, scaler.stats.var = self.mean[k], self.var[k]  # numpy float64s, as the scaler's own
        scaler.stats.count = float(self.count[k])
        scaler.discounted = self.discounted[k].copy()

    def load_from(self, k: int, scaler: RewardScaler) -> None:
        # .item(): a checkpoint may hold the scalar statistics as one-element arrays
        self.mean[k], self.var[k] = np.asarray(scaler.stats.mean).item(), np.asarray(scaler.stats.var).item()
        self.count[k] = float(scaler.stats.count)
        self.discounted[k] = scaler.discounted
