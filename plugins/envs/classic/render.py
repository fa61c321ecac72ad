"""Pictures of the classic-control simulators, drawn with Pillow from the dynamics' state.

`draw(dynamics, simulator, parameters)` returns an (H, W, 3) uint8 frame of one simulator of a
`classic_dynamics.Dynamics`, laid out like Gymnasium's pygame renderings (same screen sizes,
scales and colours) but without pygame. Task parameters that change what a system looks like are
drawn: CartPole's pole length and mass (its width), Acrobot's link length, Pendulum's rod length
and mass (the bob's size); a fixed world scale per environment makes tasks comparable by eye.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from plugins.envs.classic.dynamics import (
    AcrobotDynamics,
    CartPoleDynamics,
    Dynamics,
    MountainCarDynamics,
    PendulumDynamics,
)

Point = tuple[float, float]
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


class _Canvas:
    """A Pillow image addressed in pixels with the origin at the bottom left (y up), as pygame's
    renderings are before Gymnasium flips them."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.image = Image.new("RGB", (width, height), WHITE)
        self.pen = ImageDraw.Draw(self.image)

    def _flip(self, points: Sequence[Point]) -> list[Point]:
        return [(x, self.height - y) for x, y in points]

    def polygon(self, points: Sequence[Point], fill: tuple[int, int, int]) -> None:
        self.pen.polygon(self._flip(points), fill=fill)

    def line(self, points: Sequence[Point], fill: tuple[int, int, int], width: int = 1) -> None:
        self.pen.line(self._flip(points), fill=fill, width=width)

    def circle(self, centre: Point, radius: float, fill: tuple[int, int, int]) -> None:
        x, y = centre
        y = self.height - y
        self.pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)

    def pixels(self) -> np.ndarray:
        return np.asarray(self.image, dtype=np.uint8).copy()


def _rotated(points: Sequence[Point], angle: float, offset: Point) -> list[Point]:
    """`points` rotated by `angle` (radians, counter-clockwise) about the origin, then shifted."""
    cos, sin = math.cos(angle), math.sin(angle)
    return [(x * cos - y * sin + offset[0], x * sin + y * cos + offset[1]) for x, y in points]


def _bar(length: float, width: float) -> list[Point]:
    """A rectangle from the origin along +x, `width` thick."""
    return [(0.0, width / 2), (length, width / 2), (length, -width / 2), (0.0, -width / 2)]


def _cartpole(state: np.ndarray, parameters: Mapping[str, float]) -> np.ndarray:
    canvas = _Canvas(600, 400)
    scale = canvas.width / (CartPoleDynamics.X_THRESHOLD * 2)
    x, _, theta, _ = state
    pole_length = scale * 2 * parameters["length"]  # `length` is the half-length
    # Width grows with the pole's mass (10 px at Gymnasium's 0.1 kg), within readable bounds.
    pole_width = float(np.clip(10.0 * math.sqrt(parameters["masspole"] / 0.1), 3.0, 30.0))
    cart_width, cart_height, cart_y = 50.0, 30.0, 100.0
    cart_x = x * scale + canvas.width / 2
    canvas.line([(0, cart_y), (canvas.width, cart_y)], BLACK)
    left, right, top, bottom = -cart_width / 2, cart_width / 2, cart_height / 2, -cart_height / 2
    canvas.polygon(
        [
            (cart_x + left, cart_y + bottom),
            (cart_x + left, cart_y + top),
            (cart_x + right, cart_y + top),
            (cart_x + right, cart_y + bottom),
        ],
        BLACK,
    )
    axle = (cart_x, cart_y + cart_height / 4)
    # The pole points up at θ = 0 and leans right for positive θ (clockwise).
    canvas.polygon(_rotated(_bar(pole_length, pole_width), math.pi / 2 - theta, axle), (202, 152, 101))
    canvas.circle(axle, pole_width / 2, (129, 132, 203))
    return canvas.pixels()


def _mountaincar(state: np.ndarray, parameters: Mapping[str, float]) -> np.ndarray:
    canvas = _Canvas(600, 400)
    low, high = MountainCarDynamics.MIN_POSITION, MountainCarDynamics.MAX_POSITION
    scale = canvas.width / (high - low)

    def height(position: float) -> float:
        return math.sin(3 * position) * 0.45 + 0.55

    track = [((p - low) * scale, height(p) * scale) for p in np.linspace(low, high, 100)]
    canvas.line(track, BLACK, width=2)
    position = float(state[0])
    angle = math.atan(1.35 * math.cos(3 * position))  # slope of the track where the car stands
    base = ((position - low) * scale, height(position) * scale)
    clearance, car_width, car_height = 10.0, 40.0, 20.0
    body = [
        (-car_width / 2, clearance),
        (-car_width / 2, clearance + car_height),
        (car_width / 2, clearance + car_height),
        (car_width / 2, clearance),
    ]
    canvas.polygon(_rotated(body, angle, base), BLACK)
    for wheel_x in (car_width / 4, -car_width / 4):
        canvas.circle(_rotated([(wheel_x, clearance)], angle, base)[0], car_height / 2.5, (128, 128, 128))
    goal = MountainCarDynamics.GOAL_POSITION
    flag_x, flag_y = (goal - low) * scale, height(goal) * scale
    canvas.line([(flag_x, flag_y), (flag_x, flag_y + 50)], BLACK)
    canvas.polygon([(flag_x, flag_y + 50), (flag_x, flag_y + 40), (flag_x + 25, flag_y + 45)], (204, 204, 0))
    return canvas.pixels()


def _acrobot(state: np.ndarray, parameters: Mapping[str, float]) -> np.ndarray:
    canvas = _Canvas(500, 500)
    link = parameters["link_length"]  # both links share it (Packer et al.)
    bound = 2 * max(link, 1.0) + 0.2  # Gymnasium's 2.2 for unit links; longer links still fit
    scale = canvas.width / (2 * bound)
    centre = (canvas.width / 2, canvas.height / 2)
    theta1, theta2 = float(state[0]), float(state[1])
    # Episodes end when the tip rises one link length above the pivot: the target line.
    canvas.line([(0, centre[1] + link * scale), (canvas.width, centre[1] + link * scale)], BLACK)
    # θ1 = 0 hangs straight down; angles are counter-clockwise.
    elbow = (centre[0] + link * scale * math.sin(theta1), centre[1] - link * scale * math.cos(theta1))
    for start, angle in ((centre, theta1 - math.pi / 2), (elbow, theta1 + theta2 - math.pi / 2)):
        canvas.polygon(_rotated(_bar(link * scale, 0.1 * scale), angle, start), (0, 204, 204))
        canvas.circle(start, 0.05 * scale, (204, 204, 0))
    return canvas.pixels()


def _pendulum(state: np.ndarray, parameters: Mapping[str, float]) -> np.ndarray:
    canvas = _Canvas(500, 500)
    scale = canvas.width / (2 * 2.2)
    centre = (canvas.width / 2, canvas.height / 2)
    theta = float(state[0])
    rod = parameters["length"] * scale
    # θ = 0 is upright; positive θ turns counter-clockwise.
    canvas.polygon(_rotated(_bar(rod, 0.2 * scale), theta + math.pi / 2, centre), (204, 77, 77))
    end = _rotated([(rod, 0.0)], theta + math.pi / 2, centre)[0]
    canvas.circle(end, 0.1 * scale * math.sqrt(parameters["mass"]), (204, 77, 77))
    canvas.circle(centre, 0.05 * scale, BLACK)
    return canvas.pixels()


_DRAWERS = (
    (CartPoleDynamics, _cartpole),
    (MountainCarDynamics, _mountaincar),
    (AcrobotDynamics, _acrobot),
    (PendulumDynamics, _pendulum),
)


def draw(dynamics: Dynamics, simulator: int, parameters: Mapping[str, float]) -> np.ndarray:
    """An (H, W, 3) uint8 picture of simulator `simulator` of `dynamics` with task `parameters`."""
    for kind, drawer in _DRAWERS:
        if isinstance(dynamics, kind):
            return drawer(dynamics.state[:, simulator], parameters)
    raise NotImplementedError(f"{type(dynamics).__name__} cannot render: no drawing for it")
