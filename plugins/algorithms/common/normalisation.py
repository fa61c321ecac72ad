"""Observation normalisation and reward scaling. Their statistics stay local to a learner: they
are checkpointed with it but never mixed."""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Running mean and variance over batches (parallel-variance update)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        correction = delta**2 * self.count * batch_count / total
        self.var = (self.var * self.count + batch_var * batch_count + correction) / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = np.array(state["mean"]), np.array(state["var"]), float(state["count"])


class ObservationNormaliser:
    """(obs − mean) / std, clipped to ±clip. Statistics are refreshed once per rollout."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float = 10.0) -> None:
        self.enabled = enabled
        self.clip = clip
        self.stats = RunningMeanStd(shape)
        self._refresh()

    def _refresh(self) -> None:
        self._mean = self.stats.mean.astype(np.float32)
        self._inv_std = (1.0 / np.sqrt(self.stats.var + 1e-8)).astype(np.float32)

    def update(self, raw_batch: np.ndarray) -> None:
        if self.enabled:
            self.stats.update(raw_batch.reshape(-1, *self.stats.mean.shape))
            self._refresh()

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self._refresh()

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return raw.astype(np.float32, copy=False)
        # float32 whatever the env gives (Gymnasium's MuJoCo envs give float64)
        return np.clip((raw - self._mean) * self._inv_std, -self.clip, self.clip).astype(np.float32, copy=False)


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
        returns = np.empty_like(rewards, dtype=np.float64)
        for t in range(rewards.shape[0]):
            self.discounted = self.discounted * self.gamma + rewards[t]
            returns[t] = self.discounted
            self.discounted[ended[t]] = 0.0
        self.stats.update(returns.reshape(-1))
        return np.clip(rewards / np.sqrt(self.stats.var + 1e-8), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {**self.stats.state_dict(), "discounted": self.discounted.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)
        self.discounted = np.array(state["discounted"])
