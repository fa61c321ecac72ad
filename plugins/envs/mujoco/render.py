"""Offscreen frames of MuJoCo envs for `bench eval --video` (one renderer per simulator, reused).

`MujocoFrames` draws the Gymnasium MuJoCo envs of `MujocoVectorEnv` and of Gymnasium's own MuJoCo
ids run through `GymnasiumTaskVectorEnv` (it is the `frames` the family hands that env).
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np


class MujocoFrames:
    """Frames of Gymnasium MuJoCo envs' current states from offscreen `mujoco.Renderer`s, one per
    simulator, with the env's default camera (Gymnasium's `default_camera_config`, following the
    tracked body when it names one). A machine without a display needs MUJOCO_GL=egl or osmesa."""

    def __init__(self) -> None:
        self._renderers: dict[int, tuple[Any, Any]] = {}  # simulator -> (mujoco.Renderer, MjvCamera)

    def frame(self, simulator: int, env: gym.Env) -> np.ndarray:
        """An (H, W, 3) uint8 picture of `env` (unwrapped), the env of `simulator`."""
        if simulator not in self._renderers:
            self._renderers[simulator] = _renderer(env)
        renderer, camera = self._renderers[simulator]
        renderer.update_scene(env.data, camera=camera)
        return renderer.render()

    def close(self) -> None:
        for renderer, _ in self._renderers.values():
            renderer.close()
        self._renderers.clear()


def _renderer(env: Any) -> tuple[Any, Any]:
    """A renderer sized like the env's own (within the model's offscreen buffer) and its camera."""
    import mujoco

    from benchbase import UserError

    model = env.model
    width = min(int(getattr(env, "width", 480)), model.vis.global_.offwidth)
    height = min(int(getattr(env, "height", 480)), model.vis.global_.offheight)
    try:
        renderer = mujoco.Renderer(model, height=height, width=width)
    except Exception as error:  # noqa: BLE001 - no OpenGL context of any kind
        backend = os.environ.get("MUJOCO_GL", "unset")
        raise UserError(
            f"MuJoCo cannot render here (MUJOCO_GL={backend}: {str(error).splitlines()[0]}); "
            "install EGL or OSMesa, or set MUJOCO_GL to a backend that works"
        ) from None
    camera = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, camera)
    config = env.mujoco_renderer.default_cam_config or {}
    for key, value in config.items():
        if isinstance(value, np.ndarray):
            getattr(camera, key)[:] = value
        else:
            setattr(camera, key, value)
    if camera.trackbodyid >= 0 and "trackbodyid" in config:
        camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
    return renderer, camera
