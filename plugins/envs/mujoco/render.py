"""Offscreen frames of MuJoCo envs for `bench eval --video` (one renderer per simulator, reused)."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np


def mujoco_frame(renderers: dict, simulator: int, env: gym.Env) -> np.ndarray:
    """A frame of a Gymnasium MuJoCo env's current state from an offscreen `mujoco.Renderer`,
    one per simulator (kept in `renderers`), with the env's default camera (Gymnasium's
    `default_camera_config`, following the tracked body when it names one). A machine without a
    display needs MUJOCO_GL=egl or osmesa."""
    if simulator not in renderers:
        import mujoco

        from benchbase.errors import UserError

        model = env.model
        width = min(int(getattr(env, "width", 480)), model.vis.global_.offwidth)
        height = min(int(getattr(env, "height", 480)), model.vis.global_.offheight)
        try:
            renderer = mujoco.Renderer(model, height=height, width=width)
        except Exception as error:  # noqa: BLE001 - no OpenGL context of any kind
            backend = os.environ.get("MUJOCO_GL", "unset")
            raise UserError(f"MuJoCo cannot render here (MUJOCO_GL={backend}: {str(error).splitlines()[0]}); "
                            "install EGL or OSMesa, or set MUJOCO_GL to a backend that works") from None
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
        renderers[simulator] = (renderer, camera)
    renderer, camera = renderers[simulator]
    renderer.update_scene(env.data, camera=camera)
    return renderer.render()
