"""Physics parameters of a MuJoCo model: applied per task, restored exactly from pristine copies.

A task changes a few fields of the compiled `MjModel` (body masses and inertias, of every body or
of the torso alone, actuator gears, sliding friction, the medium's density, viscosity and wind).
`PristinePhysics` copies those fields once, right after compilation, and every `apply` writes
`pristine × scale` (never `current × scale`), then recomputes the model's derived constants with
`mj_setConst`. So a simulator that switches task A → B → A holds exactly the model a fresh
simulator on A holds, and its trajectories match bit for bit (MuJoCo itself is deterministic).

Why each field:
- a body's mass and inertia scale together: a change of density at fixed geometry (the centre of
  mass and principal axes stay put), so the equivalent-inertia boxes of MuJoCo's fluid model keep
  their shape; one factor acts on every body (Diff-DAC's mass) and another on the body named
  ``torso`` alone (Packer's density: their HeavyTorso/LightTorso variants);
- gear scales the torque a unit control produces (actuator "power"), leaving the control range
  and so the action space and the control cost unchanged;
- only the sliding coefficient (column 0) of `geom_friction` scales: MuJoCo takes the larger of
  two geoms' coefficients per contact, so scaling every geom (floor included) scales each contact's
  friction by the same factor; torsional and rolling friction are unused by these models.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import mujoco
import numpy as np

#: The Diff-DAC air medium: without a medium, wind exerts no force (MuJoCo units: kg/m³, Pa·s).
AIR_DENSITY = 1.2
AIR_VISCOSITY = 0.0002
#: The body `PhysicsSettings.torso_mass_scale` acts on (the name in Hopper-v5 and HalfCheetah-v5).
TORSO = "torso"


@dataclass(frozen=True)
class PhysicsSettings:
    """What one task sets, relative to the model as compiled (1.0 and 0.0 leave it unchanged)."""

    air: bool = False  # fill the world with air (density 1.2, viscosity 0.0002)
    wind_x: float = 0.0  # m/s, world frame; needs air
    wind_y: float = 0.0  # m/s, world frame (lateral: no force on the planar runners' free axes)
    mass_scale: float = 1.0  # every body's mass and inertia
    torso_mass_scale: float = 1.0  # the torso's mass and inertia, on top of mass_scale
    gear_scale: float = 1.0  # every actuator's gear
    friction_scale: float = 1.0  # every geom's sliding friction


class PristinePhysics:
    """The fields of `model` a task may change, as compiled; `apply` rewrites them from these."""

    def __init__(self, model: mujoco.MjModel) -> None:
        self.model = model
        self.body_mass = model.body_mass.copy()
        self.body_inertia = model.body_inertia.copy()
        self.torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, TORSO)  # -1: no torso
        self.actuator_gear = model.actuator_gear.copy()
        self.sliding_friction = model.geom_friction[:, 0].copy()
        self.wind = model.opt.wind.copy()
        self.density = float(model.opt.density)
        self.viscosity = float(model.opt.viscosity)
        # mj_setConst works in an MjData; a private one leaves the simulator's own state alone.
        self._scratch = mujoco.MjData(model)

    def apply(self, settings: PhysicsSettings) -> None:
        """Make the model the pristine one with `settings` applied (whatever was applied before)."""
        model = self.model
        body_scale = np.full(len(self.body_mass), settings.mass_scale)
        if settings.torso_mass_scale != 1.0:
            if self.torso < 0:
                raise ValueError(f"torso_mass_scale needs a body named {TORSO!r}; this model has none")
            body_scale[self.torso] *= settings.torso_mass_scale
        model.body_mass[:] = self.body_mass * body_scale
        model.body_inertia[:] = self.body_inertia * body_scale[:, None]
        model.actuator_gear[:] = self.actuator_gear * settings.gear_scale
        model.geom_friction[:, 0] = self.sliding_friction * settings.friction_scale
        model.opt.wind[:] = self.wind
        if settings.air:
            model.opt.density, model.opt.viscosity = AIR_DENSITY, AIR_VISCOSITY
            model.opt.wind[0] = settings.wind_x
            model.opt.wind[1] = settings.wind_y
        else:
            model.opt.density, model.opt.viscosity = self.density, self.viscosity
        # Masses and gears feed derived constants (subtree masses, inverse weights that set the
        # contact softness, actuator acceleration scales): recompute them as the compiler would.
        # On the pristine fields this reproduces the compiled model exactly.
        mujoco.mj_setConst(model, self._scratch)


# Gymnasium's half_cheetah.xml still uses this compiler attribute; MuJoCo warns on every compile.
_KNOWN_ASSET_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def quiet_known_asset_warnings() -> Iterator[None]:
    """Drop MuJoCo's deprecation warning about Gymnasium's own assets while models compile; any
    other warning still reaches stderr."""
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if any(known in message for known in _KNOWN_ASSET_WARNINGS):
            return
        if previous is not None:
            previous(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
