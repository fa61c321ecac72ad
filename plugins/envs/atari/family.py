"""Atari (ALE) env families, with the standard DQN preprocessing (`plugins.envs.atari.vector`).

- ``<Game>NoFrameskip-v4`` (e.g. ``PongNoFrameskip-v4``, the GALA seed's env): one game as one
  task, resolved on demand for every ROM that ale-py ships (a `resolve_env_family` hook that runs
  before the generic Gymnasium resolver). ``ALE/<Game>-v5`` ids get the same preprocessing plus
  v5's sticky actions (repeat probability 0.25), instead of the generic resolver's raw RGB
  frames. Score range: the game's (random, human) scores where the Atari-57 table has them.
  Other ALE ids (``Pong-v4``, ``ALE/Pong-ram-v5``…) resolve to the generic one-task Gymnasium
  family, drawn from the emulator's screen (`AleScreen`).
- ``atari-games``: a set of games; learner k plays game k mod len(games). Every simulator uses
  ALE's full 18-action set, so all games share one action space.
- ``atari-modes``: one game's modes and difficulties (Machado et al. 2018); learners train on
  some (mode, difficulty) variants and are evaluated on the others (split ``held-out``).

Observations are (4, 84, 84) uint8 frame stacks; actions are Discrete. Training signals are
shaped (episodic life, sign-clipped rewards) while `FinishedEpisode`s report raw scores of whole
games: see `plugins.envs.atari.vector` for how that maps onto the contract.

Vectorisation (benchmarks/atari_speed.py, Pong, 8 simulators, 2 cores): stepping one ALE per
simulator in a Python loop costs the same CPU per step as ale-py's C++ vector env on one thread
(about 310 µs per agent step: emulation 70%, screen grabs 10%, max + resize 19%, Python
bookkeeping under 2%), and starts faster (no ROM reloads at reset). The C++ env wins only when
it has cores of its own (2 threads: 1.7× the steps/s on an otherwise idle 2-core machine), so
``backend=auto`` uses it when ``native_threads`` > 1 and the learner's simulators all run one
game in its default mode and difficulty without resampling; otherwise the Python loop, which
runs any mix of games, modes and difficulties.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from benchbase import (
    EnvFamily,
    EnvFamilyParams,
    Register,
    ResolvedNames,
    Task,
    TaskVectorEnv,
    UserError,
    hookimpl,
    param,
    unknown_name,
)
from plugins.envs.atari.games import (
    find_game,
    game_info,
    reference_scores,
    require_game,
    supported_games,
)
from plugins.envs.atari.vector import (
    AleScreen,
    NativeAtariVectorEnv,
    Preprocessing,
    PythonAtariVectorEnv,
    TaskSampler,
    Variant,
)
from plugins.envs.gymnasium.family import GymnasiumIdFamily, registered_entry_point

HELD_OUT = "held-out"
DEFAULT_GAMES = "Pong,Breakout,SpaceInvaders,Seaquest"
# Keys the seeded order of training variants apart from other draws made from the cell seed.
_TRAINING_KEY = 0xA7A1


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class AtariParams(EnvFamilyParams):
    max_episode_steps: int = param(27_000, "time limit in agent steps (27,000 × 4 frames = 108,000 frames)", min=1)
    noop_max: int = param(30, "a real game starts with 1 to noop_max no-op frames (0: none)", min=0)
    episodic_life: bool = param(
        True, "a lost life ends the learner's episode (terminated) without resetting the game; scores count whole games"
    )
    clip_rewards: bool = param(True, "training rewards are sign-clipped to -1, 0, 1; scores stay raw")
    repeat_action_probability: float = param(
        0.0, "sticky actions: ALE repeats the previous action with this probability at every frame", min=0.0, below=1.0
    )
    backend: Literal["auto", "native", "python"] = param(
        "auto",
        "native: ale-py's C++ vector env (one game in its default mode); python: one ALE per simulator in a "
        "loop (as fast on one core); auto: native when native_threads > 1 and it can run the tasks",
    )
    native_threads: int = param(
        1,
        "threads of the native backend; more than 1 only pays where cores are free (learners already share them)",
        min=1,
    )


@dataclass(frozen=True)
class AtariGameParams(AtariParams):
    full_action_space: bool = param(False, "use ALE's 18 actions instead of the game's minimal set")


@dataclass(frozen=True)
class StickyAtariGameParams(AtariGameParams):
    repeat_action_probability: float = param(
        0.25,
        "sticky actions (ALE v5: 0.25): ALE repeats the previous action with this probability at every frame",
        min=0.0,
        below=1.0,
    )


@dataclass(frozen=True)
class AtariGamesParams(AtariParams):
    games: str = param(
        DEFAULT_GAMES, "comma-separated games (Gymnasium names or ROM ids); learner k plays game k mod len(games)"
    )


@dataclass(frozen=True)
class AtariModesParams(AtariParams):
    game: str = param("SpaceInvaders", "the game whose modes and difficulties make the tasks")
    train_modes: str = param(
        "auto",
        "comma-separated training modes; auto = every mode but every fourth from "
        "the second (1, 5, 9… of the game's list), which are held out",
    )
    train_difficulties: str = param("0", "comma-separated training difficulties; the others are held out")


# --------------------------------------------------------------------------------------------
# Shared helpers


def _settings(params: AtariParams, full_action_space: bool) -> Preprocessing:
    return Preprocessing(
        max_episode_steps=params.max_episode_steps,
        noop_max=params.noop_max,
        episodic_life=params.episodic_life,
        clip_rewards=params.clip_rewards,
        repeat_action_probability=params.repeat_action_probability,
        full_action_space=full_action_space,
    )


def _game_task(rom: str, mode: int, difficulty: int, task_id: str) -> Task:
    info = game_info(rom)
    return Task(task_id, {"game_index": float(info.index), "mode": float(mode), "difficulty": float(difficulty)})


def _variant(task: Task) -> Variant:
    p = task.parameters
    return Variant(supported_games()[int(p["game_index"])], int(p["mode"]), int(p["difficulty"]))


def _is_default(variant: Variant) -> bool:
    info = game_info(variant.rom)
    return variant.mode == info.default_mode and variant.difficulty == info.default_difficulty


def _native_available() -> bool:
    import ale_py

    return hasattr(ale_py, "ALEVectorInterface")  # an optional part of ale-py builds


def make_atari_env(
    owner: str,
    params: AtariParams,
    tasks: Sequence[Task],
    seed: int,
    *,
    full_action_space: bool,
    sampler: TaskSampler | None = None,
) -> TaskVectorEnv:
    """The vector env of `tasks`, on the backend `params.backend` asks for."""
    variants = [_variant(t) for t in tasks]
    settings = _settings(params, full_action_space)
    one_default_game = len(set(variants)) == 1 and _is_default(variants[0]) and sampler is None
    native_ok = one_default_game and _native_available()
    if params.backend == "native" and not native_ok:
        raise UserError(
            f"{owner}: backend=native runs one game in its default mode and difficulty, without "
            "resampling; use backend=python or auto"
        )
    # Natively on one thread costs as much CPU as the Python loop (see the module docstring).
    if native_ok and (params.backend == "native" or (params.backend == "auto" and params.native_threads > 1)):
        return NativeAtariVectorEnv(tasks, variants[0], settings, seed, threads=params.native_threads)
    return PythonAtariVectorEnv(tasks, variants, settings, seed, sampler=sampler)


def _no_splits(family: EnvFamily, split: str) -> UserError:
    return unknown_name(f"evaluation split of {family.name}", split, family.splits)


def _integers(text: str, what: str, owner: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{owner}: {what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{owner}: {what} is empty")
    return values


# --------------------------------------------------------------------------------------------
# One game


class AtariGameFamily(EnvFamily):
    """One game as one task, named by its Gymnasium id (`<Game>NoFrameskip-v4`, `ALE/<Game>-v5`)."""

    def __init__(self, env_id: str, game: str, rom: str, params: type[AtariGameParams], sticky: str) -> None:
        self.rom = rom
        self.name = env_id
        self.description = (
            f"Atari {game}, DQN preprocessing (84×84×4 grayscale, frame skip 4, episodic life, "
            f"clipped rewards; {sticky})"
        )
        self.Params = params
        self.score_range = reference_scores(rom)

    def _task(self) -> Task:
        info = game_info(self.rom)
        return _game_task(self.rom, info.default_mode, info.default_difficulty, info.name)

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        return [self._task()] * count

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        raise _no_splits(self, split)

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int) -> TaskVectorEnv:
        return make_atari_env(self.name, params, tasks, seed, full_action_space=params.full_action_space)


_NOFRAMESKIP = re.compile(r"^(?P<game>[A-Za-z0-9]+)NoFrameskip-v4$")
_V5 = re.compile(r"^ALE/(?P<game>[A-Za-z0-9]+)-v5$")


def atari_game_family(env_id: str) -> AtariGameFamily | None:
    """The family of a ``<Game>NoFrameskip-v4`` or ``ALE/<Game>-v5`` id, or None for other names."""
    for pattern, params, how in (
        (_NOFRAMESKIP, AtariGameParams, "no sticky actions"),
        (_V5, StickyAtariGameParams, "sticky actions 0.25"),
    ):
        match = pattern.match(env_id)
        rom = find_game(match["game"]) if match else None
        if rom is not None:
            return AtariGameFamily(env_id, match["game"], rom, params, how)
    return None


# --------------------------------------------------------------------------------------------
# A set of games


class AtariGamesFamily(EnvFamily):
    name = "atari-games"
    description = "a set of Atari games (DQN preprocessing, full 18-action set); learner k plays game k mod len(games)"
    Params = AtariGamesParams
    # Normalisation is per game: each task (a game) has its own (random, human) scores.
    score_range = None
    resolved_names = (
        ResolvedNames(
            "<Game>NoFrameskip-v4, ALE/<Game>-v5",
            "ale-py",
            "any Atari game (e.g. PongNoFrameskip-v4) as a one-task family, with the standard preprocessing",
        ),
    )

    def task_score_range(self, task_id: str) -> tuple[float, float] | None:
        try:
            return reference_scores(require_game(task_id))
        except UserError:
            return None

    def _games(self, params: AtariGamesParams) -> list[str]:
        games = [require_game(part) for part in params.games.split(",") if part.strip()]
        if not games:
            raise UserError(f"{self.name}: games is empty (e.g. games={DEFAULT_GAMES})")
        return games

    def _task(self, rom: str) -> Task:
        info = game_info(rom)
        return _game_task(rom, info.default_mode, info.default_difficulty, info.name)

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        games = self._games(params)
        return [self._task(games[k % len(games)]) for k in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        raise _no_splits(self, split)

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int) -> TaskVectorEnv:
        sampler = _uniform_sampler([self._task(rom) for rom in self._games(params)]) if params.resample else None
        return make_atari_env(self.name, params, tasks, seed, full_action_space=True, sampler=sampler)


def _uniform_sampler(tasks: Sequence[Task]) -> TaskSampler:
    """Domain randomisation: a task drawn uniformly at every real reset."""
    variants = [_variant(t) for t in tasks]

    def draw(rng: np.random.Generator) -> tuple[Task, Variant]:
        k = int(rng.integers(len(tasks)))
        return tasks[k], variants[k]

    return draw


# --------------------------------------------------------------------------------------------
# One game's modes and difficulties


class AtariModesFamily(EnvFamily):
    name = "atari-modes"
    description = (
        "one Atari game's modes and difficulties (Machado et al. 2018): train on some, evaluate on the held-out others"
    )
    Params = AtariModesParams
    splits = (HELD_OUT,)
    # Random and human scores exist for default modes only; other modes score on other scales.
    score_range = None

    def variants(self, params: AtariModesParams) -> tuple[list[Task], list[Task]]:
        """(training, held-out) tasks: every (mode, difficulty) pair of the game is in one of them."""
        rom = require_game(params.game)
        info = game_info(rom)
        owner = f"{self.name} ({info.name})"
        if params.train_modes.strip() == "auto":
            held_modes = set(info.modes[1::4])
            modes = [m for m in info.modes if m not in held_modes]
        else:
            modes = _integers(params.train_modes, "train_modes", owner)
        difficulties = _integers(params.train_difficulties, "train_difficulties", owner)
        for values, available, what in ((modes, info.modes, "mode"), (difficulties, info.difficulties, "difficulty")):
            missing = [v for v in values if v not in available]
            if missing:
                raise UserError(f"{owner} has no {what} {missing[0]} (available: {', '.join(map(str, available))})")
        # Held-out order: new modes at trained difficulties first (what a few evaluation episodes
        # should cover), then trained modes at new difficulties, then both new.
        groups: dict[tuple[bool, bool], list[Task]] = {}
        for mode in info.modes:
            for difficulty in info.difficulties:
                task = _game_task(rom, mode, difficulty, f"{info.name}-m{mode}-d{difficulty}")
                groups.setdefault((mode in modes, difficulty in difficulties), []).append(task)
        training = groups.get((True, True), [])
        held_out = [t for key in ((False, True), (True, False), (False, False)) for t in groups.get(key, [])]
        if not held_out:
            raise UserError(
                f"{owner}: every mode and difficulty is trained on, none is left for the held-out split "
                f"(modes: {', '.join(map(str, info.modes))}; difficulties: "
                f"{', '.join(map(str, info.difficulties))})"
            )
        return training, held_out

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        # A seeded order, so that seeds vary which learner trains on which variant; cycling through
        # it covers every variant before any repeats. Learner k's task does not depend on `count`.
        training, _ = self.variants(params)
        order = np.random.default_rng([_TRAINING_KEY, int(seed) & 0xFFFF_FFFF]).permutation(len(training))
        return [training[order[k % len(training)]] for k in range(count)]

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        if split not in self.splits:
            raise _no_splits(self, split)
        _, held_out = self.variants(params)
        return [held_out[k % len(held_out)] for k in range(count)]  # the same ones for every seed

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int) -> TaskVectorEnv:
        sampler = _uniform_sampler(self.variants(params)[0]) if params.resample else None
        return make_atari_env(self.name, params, tasks, seed, full_action_space=False, sampler=sampler)


# --------------------------------------------------------------------------------------------
# Hooks


@hookimpl
def register_env_families(register: Register) -> None:
    register(AtariGamesFamily())
    register(AtariModesFamily())


ALE_ENTRY_POINT = "ale_py.env:AtariEnv"  # of every ALE id ale-py registers with Gymnasium


@hookimpl(tryfirst=True)
def resolve_env_family(name: str) -> EnvFamily | None:
    # Before other resolvers: a generic family would hand out raw RGB frames.
    family = atari_game_family(name)
    if family is None and registered_entry_point(name) == ALE_ENTRY_POINT:
        return GymnasiumIdFamily(name, frames=AleScreen)
    return family
