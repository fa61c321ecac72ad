"""Numpy-vectorised physics of Gymnasium's four classic-control environments.

Each `Dynamics` steps P simulators at once; every physics constant a family varies is a per-
simulator array, so one vector env can hold P different tasks. The equations, integrators,
rewards, terminations, initial-state distributions and observation spaces reproduce Gymnasium
1.x (`gymnasium/envs/classic_control`), reimplemented here without Python loops over simulators.
Constants are folded per simulator when parameters change (not per step), which moves results by
a few ulps at most relative to Gymnasium's operation order.

Episode bookkeeping (returns, time limits, autoreset) lives in `classic_vector`; this module only
knows states, actions and parameters.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from gymnasium import spaces


class Dynamics:
    """P simulators of one environment. `state` is float64 [state_dim, P], Gymnasium's order."""

    #: Names of the per-simulator parameters, in the row order of `set_parameters`' matrix.
    parameter_names: ClassVar[tuple[str, ...]] = ()
    #: Gymnasium's default value of each parameter.
    defaults: ClassVar[tuple[float, ...]] = ()
    state_dim: ClassVar[int] = 0

    observation_space: spaces.Space
    action_space: spaces.Space

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.state = np.zeros((self.state_dim, num_envs))
        #: Consecutive steps near upright (Pendulum's success needs it); None elsewhere.
        self.upright_streak: np.ndarray | None = None

    def set_parameters(self, values: np.ndarray) -> None:
        """Install a [len(parameter_names), P] matrix of physics parameters."""
        raise NotImplementedError

    def reset_states(self, index: np.ndarray, rng: np.random.Generator) -> None:
        """Draw fresh initial states for the simulators in `index` (Gymnasium's distribution)."""
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every simulator one step; returns (float32 rewards [P], bool terminated [P])."""
        raise NotImplementedError

    def observe(self) -> np.ndarray:
        """A fresh C-contiguous float32 [P, obs_dim] observation array."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------


class CartPoleDynamics(Dynamics):
    """Cart-pole with Euler integration (Gymnasium CartPole-v1, `kinematics_integrator="euler"`)."""

    parameter_names = ("force_mag", "length", "masspole")  # length is the pole's HALF-length
    defaults = (10.0, 0.5, 0.1)
    state_dim = 4  # x, x_dot, theta, theta_dot

    GRAVITY = 9.8
    MASSCART = 1.0
    TAU = 0.02
    X_THRESHOLD = 2.4
    THETA_THRESHOLD = 12 * 2 * math.pi / 360

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        high = np.array([self.X_THRESHOLD * 2, np.inf, self.THETA_THRESHOLD * 2, np.inf], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        # numpy's per-call overhead dominates at small P: keep every operand a contiguous 1-D
        # array (rows of `state`, constants broadcast to P) so each op is one cheap ufunc call.
        self._rows = tuple(self.state)
        self._signs = np.array([-1.0, 1.0])
        self._tau = np.full(num_envs, self.TAU)
        self._gravity = np.full(num_envs, self.GRAVITY)
        self._x_threshold = np.full(num_envs, self.X_THRESHOLD)
        self._theta_threshold = np.full(num_envs, self.THETA_THRESHOLD)
        self._ones = np.ones(num_envs, dtype=np.float32)
        self.set_parameters(np.repeat(np.array(self.defaults)[:, None], num_envs, axis=1))

    def set_parameters(self, values: np.ndarray) -> None:
        force_mag, length, masspole = np.asarray(values, dtype=np.float64)
        total_mass = masspole + self.MASSCART
        polemass_length = masspole * length
        # Per-simulator constants of Gymnasium's equations, divided through by total_mass once.
        self._force_tm = force_mag / total_mass
        self._pml_tm = polemass_length / total_mass
        self._length_43 = length * (4.0 / 3.0)
        self._mpl_tm = length * masspole / total_mass

    def reset_states(self, index: np.ndarray, rng: np.random.Generator) -> None:
        self.state[:, index] = rng.uniform(-0.05, 0.05, size=(4, len(index)))

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, x_dot, theta, theta_dot = self._rows
        cos, sin = np.cos(theta), np.sin(theta)
        # temp = (±force + ml·θ̇²·sinθ) / M   (action 1 pushes right, 0 left)
        temp = self._signs[actions]
        temp *= self._force_tm
        temp += self._pml_tm * (theta_dot * theta_dot) * sin
        # θ̈ = (g·sinθ − cosθ·temp) / (l·(4/3 − m·cos²θ/M))
        theta_acc = (self._gravity * sin - cos * temp) / (self._length_43 - self._mpl_tm * (cos * cos))
        # ẍ = temp − ml·θ̈·cosθ / M
        x_acc = temp - self._pml_tm * theta_acc * cos
        # Euler: positions move with the old velocities.
        tau = self._tau
        x += tau * x_dot
        theta += tau * theta_dot
        x_dot += tau * x_acc
        theta_dot += tau * theta_acc
        terminated = np.abs(x) > self._x_threshold
        terminated |= np.abs(theta) > self._theta_threshold
        return self._ones.copy(), terminated

    def observe(self) -> np.ndarray:
        return self.state.T.astype(np.float32, order="C")


# ---------------------------------------------------------------------------------------------


class MountainCarDynamics(Dynamics):
    """Gymnasium MountainCar-v0; `gravity` is the coefficient of the cos(3x) slope term."""

    parameter_names = ("force", "gravity")
    defaults = (0.001, 0.0025)
    state_dim = 2  # position, velocity

    MIN_POSITION = -1.2
    MAX_POSITION = 0.6
    MAX_SPEED = 0.07
    GOAL_POSITION = 0.5
    GOAL_VELOCITY = 0.0

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        low = np.array([self.MIN_POSITION, -self.MAX_SPEED], dtype=np.float32)
        high = np.array([self.MAX_POSITION, self.MAX_SPEED], dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._rows = tuple(self.state)
        self._push = np.array([-1.0, 0.0, 1.0])  # action − 1
        self._three = np.full(num_envs, 3.0)
        self._min_speed = np.full(num_envs, -self.MAX_SPEED)
        self._max_speed = np.full(num_envs, self.MAX_SPEED)
        self._min_position = np.full(num_envs, self.MIN_POSITION)
        self._max_position = np.full(num_envs, self.MAX_POSITION)
        self._goal_position = np.full(num_envs, self.GOAL_POSITION)
        self._goal_velocity = np.full(num_envs, self.GOAL_VELOCITY)
        self._rewards = np.full(num_envs, -1.0, dtype=np.float32)
        self.set_parameters(np.repeat(np.array(self.defaults)[:, None], num_envs, axis=1))

    def set_parameters(self, values: np.ndarray) -> None:
        force, gravity = np.asarray(values, dtype=np.float64)
        self._force = force.copy()
        self._neg_gravity = -gravity

    def reset_states(self, index: np.ndarray, rng: np.random.Generator) -> None:
        self.state[0, index] = rng.uniform(-0.6, -0.4, size=len(index))
        self.state[1, index] = 0.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Constants are arrays and clips are minimum/maximum: both much cheaper at small P.
        position, velocity = self._rows
        velocity += self._push[actions] * self._force + np.cos(self._three * position) * self._neg_gravity
        _clip_inplace(velocity, self._min_speed, self._max_speed)
        position += velocity
        _clip_inplace(position, self._min_position, self._max_position)
        # Inelastic left wall.
        np.copyto(velocity, 0.0, where=(position == self._min_position) & (velocity < 0))
        terminated = (position >= self._goal_position) & (velocity >= self._goal_velocity)
        return self._rewards.copy(), terminated

    def observe(self) -> np.ndarray:
        return self.state.T.astype(np.float32, order="C")


# ---------------------------------------------------------------------------------------------


class AcrobotDynamics(Dynamics):
    """Gymnasium Acrobot-v1: `book` equations, one RK4 step of 0.2 s, no torque noise.

    Both links share `link_length`, `link_mass` and `link_moi` (Packer et al.). As in Gymnasium,
    the centres of mass stay at 0.5 and only link 1's length enters the equations (link 2's
    length only matters for drawing), and the target test is −cos θ1 − cos(θ1+θ2) > 1.
    """

    parameter_names = ("link_length", "link_mass", "link_moi")
    defaults = (1.0, 1.0, 1.0)
    state_dim = 4  # theta1, theta2, dtheta1, dtheta2

    DT = 0.2
    LINK_COM_POS = 0.5
    GRAVITY = 9.8
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    TORQUES = np.array([-1.0, 0.0, 1.0])

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        high = np.array([1.0, 1.0, 1.0, 1.0, self.MAX_VEL_1, self.MAX_VEL_2], dtype=np.float32)
        self.observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._velocity_bounds = np.array([[self.MAX_VEL_1], [self.MAX_VEL_2]])
        self._negative_velocity_bounds = -self._velocity_bounds
        self.set_parameters(np.repeat(np.array(self.defaults)[:, None], num_envs, axis=1))

    def set_parameters(self, values: np.ndarray) -> None:
        l1, m, moi = np.asarray(values, dtype=np.float64)
        lc = self.LINK_COM_POS
        g = self.GRAVITY
        # Gymnasium's d1, d2, φ1, φ2 with m1 = m2 = m, I1 = I2 = I, lc1 = lc2 = lc, split into
        # constant parts and coefficients of the state-dependent factors.
        self._d1_const = m * lc**2 + m * (l1**2 + lc**2) + moi + moi
        self._d1_cos = m * (2 * l1 * lc)
        self._d2_const = m * lc**2 + moi
        self._d2_cos = m * (l1 * lc)
        self._mlc_g = m * lc * g  # φ2 coefficient
        self._mll = m * l1 * lc  # centripetal coefficient
        self._neg_mll = -self._mll
        self._two_mll = 2 * self._mll
        self._half_pi = np.full(len(m), math.pi / 2)
        self._phi1_g = (m * lc + m * l1) * g
        self._denominator_const = m * lc**2 + moi

    def reset_states(self, index: np.ndarray, rng: np.random.Generator) -> None:
        # Gymnasium stores the initial state as float32.
        draws = rng.uniform(-0.1, 0.1, size=(len(index), 4)).astype(np.float32)
        self.state[:, index] = draws.T.astype(np.float64)

    def _derivatives(self, y: np.ndarray, torque: np.ndarray) -> np.ndarray:
        theta1, theta2, dtheta1, dtheta2 = y
        cos2, sin2 = np.cos(theta2), np.sin(theta2)
        d1 = self._d1_const + self._d1_cos * cos2
        d2 = self._d2_const + self._d2_cos * cos2
        phi2 = self._mlc_g * np.cos(theta1 + theta2 - self._half_pi)
        phi1 = (
            self._neg_mll * (dtheta2 * dtheta2) * sin2
            - self._two_mll * dtheta2 * dtheta1 * sin2
            + self._phi1_g * np.cos(theta1 - self._half_pi)
            + phi2
        )
        ddtheta2 = (torque + d2 / d1 * phi1 - self._mll * (dtheta1 * dtheta1) * sin2 - phi2) / (
            self._denominator_const - d2 * d2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.array((dtheta1, dtheta2, ddtheta1, ddtheta2))  # np.stack costs 5x more

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torque = self.TORQUES[np.asarray(actions)]
        y0 = self.state
        dt = self.DT
        half = dt / 2.0
        k1 = self._derivatives(y0, torque)
        k2 = self._derivatives(y0 + half * k1, torque)
        k3 = self._derivatives(y0 + half * k2, torque)
        k4 = self._derivatives(y0 + dt * k3, torque)
        new = y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        angles = new[:2]
        # Gymnasium's wrap() subtracts/adds 2π one period at a time; one period almost always
        # suffices, the loop keeps the rare multi-period case identical.
        while True:
            high, low = angles > math.pi, angles < -math.pi
            if not (np.count_nonzero(high) or np.count_nonzero(low)):
                break
            angles -= 2 * math.pi * high
            angles += 2 * math.pi * low
        velocities = new[2:]
        _clip_inplace(velocities, self._negative_velocity_bounds, self._velocity_bounds)
        self.state[...] = new
        terminated = -np.cos(new[0]) - np.cos(new[1] + new[0]) > 1.0
        rewards = terminated.astype(np.float32)
        rewards -= 1.0  # −1 per step, 0 on reaching the target
        return rewards, terminated

    def observe(self) -> np.ndarray:
        theta1, theta2, dtheta1, dtheta2 = self.state
        rows = (np.cos(theta1), np.sin(theta1), np.cos(theta2), np.sin(theta2), dtheta1, dtheta2)
        return np.array(rows).T.astype(np.float32, order="C")


# ---------------------------------------------------------------------------------------------


class PendulumDynamics(Dynamics):
    """Gymnasium Pendulum-v1 (g = 10). Torques are clipped to [−2, 2] here, as Gymnasium does."""

    parameter_names = ("length", "mass")
    defaults = (1.0, 1.0)
    state_dim = 2  # theta (0 = upright), theta_dot

    MAX_SPEED = 8.0
    MAX_TORQUE = 2.0
    DT = 0.05
    GRAVITY = 10.0
    #: Packer's success band around upright.
    UPRIGHT = math.pi / 3

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        high = np.array([1.0, 1.0, self.MAX_SPEED], dtype=np.float32)
        self.observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.action_space = spaces.Box(low=-self.MAX_TORQUE, high=self.MAX_TORQUE, shape=(1,), dtype=np.float32)
        self.upright_streak = np.zeros(num_envs, dtype=np.int64)
        # Constants as arrays: a Python scalar costs a conversion per ufunc call at small P.
        self._rows = tuple(self.state)
        self._low = np.full(num_envs, -self.MAX_TORQUE, dtype=np.float32)
        self._high = np.full(num_envs, self.MAX_TORQUE, dtype=np.float32)
        self._min_speed = np.full(num_envs, -self.MAX_SPEED)
        self._max_speed = np.full(num_envs, self.MAX_SPEED)
        self._dt = np.full(num_envs, self.DT)
        self._speed_cost = np.full(num_envs, 0.1)
        self._effort_cost = np.full(num_envs, 0.001, dtype=np.float32)  # float32 as in Gymnasium
        self._upright = np.full(num_envs, self.UPRIGHT)
        self._pi = np.full(num_envs, np.pi)
        self._two_pi = np.full(num_envs, 2 * np.pi)
        self._never = np.zeros(num_envs, dtype=bool)
        self.set_parameters(np.repeat(np.array(self.defaults)[:, None], num_envs, axis=1))

    def set_parameters(self, values: np.ndarray) -> None:
        length, mass = np.asarray(values, dtype=np.float64)
        self._gravity_term = 3 * self.GRAVITY / (2 * length)
        # Gymnasium multiplies a Python-float coefficient by the float32 torque, which numpy
        # evaluates in float32; the same rounding keeps trajectories identical to Gymnasium's.
        self._torque_term = (3.0 / (mass * length**2)).astype(np.float32)

    def reset_states(self, index: np.ndarray, rng: np.random.Generator) -> None:
        draws = rng.uniform(low=[-math.pi, -1.0], high=[math.pi, 1.0], size=(len(index), 2))
        self.state[:, index] = draws.T
        self.upright_streak[index] = 0

    def _normalize(self, theta: np.ndarray) -> np.ndarray:
        """Angle in [−π, π), Gymnasium's `angle_normalize`."""
        return ((theta + self._pi) % self._two_pi) - self._pi

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.asarray(actions, dtype=np.float32).reshape(self.num_envs)
        u = np.minimum(np.maximum(u, self._low), self._high)
        theta, theta_dot = self._rows
        angle = self._normalize(theta)
        costs = angle * angle + self._speed_cost * (theta_dot * theta_dot) + self._effort_cost * (u * u)
        new_theta_dot = theta_dot + (self._gravity_term * np.sin(theta) + self._torque_term * u) * self._dt
        _clip_inplace(new_theta_dot, self._min_speed, self._max_speed)
        theta += new_theta_dot * self._dt
        np.copyto(theta_dot, new_theta_dot)
        # Packer's success: consecutive steps within π/3 of upright.
        self.upright_streak += 1
        self.upright_streak *= np.abs(self._normalize(theta)) <= self._upright
        rewards = np.empty(self.num_envs, dtype=np.float32)
        np.negative(costs, out=rewards, casting="same_kind")
        return rewards, self._never.copy()

    def observe(self) -> np.ndarray:
        theta, theta_dot = self._rows
        return np.array((np.cos(theta), np.sin(theta), theta_dot)).T.astype(np.float32, order="C")


def _clip_inplace(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    """np.clip(x, low, high, out=x) at a third of its call overhead for small arrays."""
    np.maximum(x, low, out=x)
    np.minimum(x, high, out=x)


def _angle_normalize(x: np.ndarray) -> np.ndarray:
    return ((x + np.pi) % (2 * np.pi)) - np.pi
