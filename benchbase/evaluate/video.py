"""Recording evaluation episodes: `.mp4` through imageio-ffmpeg, `.gif` through Pillow.

Frames come from a vector env's optional `render(simulator) -> (H, W, 3) uint8` method (the
`benchbase.api.contracts.Renderable` protocol). A `VideoWriter` streams MP4 frames to ffmpeg as
they arrive (GIF frames are kept, shrunk and palettised, until the end) into a hidden temporary
file beside the target, renamed into place by `finish`: a failed evaluation leaves no
half-written video.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchbase.api.contracts import Renderable
from benchbase.errors import UserError

SUFFIXES = (".mp4", ".gif")
FPS = 30
GIF_MAX_WIDTH = 320  # GIF frames are kept in memory until the end: shrink them


def check_video_path(path: Path) -> None:
    """A UserError unless `path` names a .mp4 or .gif file in a folder that can exist."""
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--video {path}: give a .mp4 or .gif file name")
    if path.exists() and path.is_dir():
        raise UserError(f"--video {path} is a folder: give a .mp4 or .gif file name")


def prepare_rendering() -> str | None:
    """Choose MuJoCo's headless OpenGL backend before mujoco is imported: MUJOCO_GL as set, else
    egl where libEGL is installed (it works here without a display or GPU), else osmesa where
    libOSMesa is. A backend whose library is missing breaks `import mujoco` itself, so none is
    chosen then (MuJoCo envs then fail to render with a one-line error)."""
    if "MUJOCO_GL" not in os.environ:
        for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
            if ctypes.util.find_library(library):
                os.environ["MUJOCO_GL"] = backend
                break
    return os.environ.get("MUJOCO_GL")


def can_render(env: Any, family: str) -> None:
    """A UserError unless `env` is `Renderable` (its frames are checked as they come: some envs
    only have a screen once reset)."""
    if not isinstance(env, Renderable):
        raise UserError(
            f"env family {family} cannot render: its vector env ({type(env).__name__}) has no render method"
        )


def check_frame(frame: Any) -> None:
    if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8):
        raise UserError("this env cannot render: its render(0) gave no (H, W, 3) uint8 image")


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    """`frame` with `text` in its top-left corner (which cell, learner, split and task it shows)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    pen = ImageDraw.Draw(image)
    font = _font(max(10, frame.shape[0] // 28))
    left, top, right, bottom = pen.textbbox((6, 4), text, font=font)
    pen.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(255, 255, 255))
    pen.text((6, 4), text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


class VideoWriter:
    """Frames in, one video file out (`finish`), or nothing at all (`abort`)."""

    def __init__(self, path: Path, fps: int = FPS) -> None:
        check_video_path(path)
        self.path = path
        self.fps = fps
        self.frames = 0
        self._temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
        self._gif: list[Any] = []
        self._ffmpeg: Any = None
        self._size: tuple[int, int] | None = None  # (width, height) of the first frame

    def add(self, frame: np.ndarray, caption: str = "") -> None:
        if not self.frames:
            check_frame(frame)
        frame = self._fit(frame)
        if caption:
            frame = _caption(frame, caption)
        if self.path.suffix.lower() == ".gif":
            from PIL import Image

            image = Image.fromarray(frame)
            if image.width > GIF_MAX_WIDTH:  # a box filter by a whole factor: cheap (resize costs ms a frame)
                image = image.reduce(-(-image.width // GIF_MAX_WIDTH))
            self._gif.append(image.quantize(colors=64, method=Image.Quantize.FASTOCTREE))  # median cut: 10× slower
        else:
            self._mp4().send(np.ascontiguousarray(frame))
        self.frames += 1

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        """Every frame the size of the first (even sides, as H.264 wants), padded or cropped."""
        height, width = frame.shape[:2]
        if self._size is None:
            self._size = (width + width % 2, height + height % 2)
        target_width, target_height = self._size
        if (width, height) == (target_width, target_height):
            return frame
        fitted = np.full((target_height, target_width, 3), 255, dtype=np.uint8)
        fitted[: min(height, target_height), : min(width, target_width)] = frame[:target_height, :target_width]
        return fitted

    def _mp4(self) -> Any:
        if self._ffmpeg is None:
            import imageio_ffmpeg

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._ffmpeg = imageio_ffmpeg.write_frames(
                str(self._temporary),
                self._size,
                fps=self.fps,
                codec="libx264",
                pix_fmt_out="yuv420p",
                macro_block_size=1,
                quality=7,
                ffmpeg_log_level="error",
            )
            self._ffmpeg.send(None)  # start the generator
        return self._ffmpeg

    def finish(self) -> Path | None:
        """Write the file (None when no frame was recorded)."""
        if self.frames == 0:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._gif:
            duration_ms = max(20, round(1000 / self.fps / 10) * 10)  # GIF counts in 1/100 s
            self._gif[0].save(
                self._temporary, format="GIF", save_all=True, append_images=self._gif[1:], duration=duration_ms, loop=0
            )
            self._gif = []
        if self._ffmpeg is not None:
            self._ffmpeg.close()
            self._ffmpeg = None
        os.replace(self._temporary, self.path)
        return self.path

    def abort(self) -> None:
        if self._ffmpeg is not None:
            try:
                self._ffmpeg.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._ffmpeg = None
        self._gif = []
        self._temporary.unlink(missing_ok=True)
