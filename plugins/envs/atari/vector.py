"""Preprocessed ALE simulators as a `TaskVectorEnv`, on two backends.

Preprocessing (Mnih et al. 2015, as in reference/envs.md): up to `noop_max` no-op frames and, for
games that wait for it, one FIRE frame after every real reset; each action repeated for 4 frames,
the observed frame being the pixel-wise max of the last two; grayscale, resized to 84×84 with
area interpolation; the last 4 frames stacked, zero-filled after a reset (oldest first).

How it maps onto the contract:

- **Episodic life** (`episodic_life`): a lost life sets `terminated` (the learner does not bootstrap
  through it) but the game goes on: the row's next observation continues the same game, and
  `final_observations` holds that same observation. The game resets only at a real game over.
- **Rewards**: `StepResult.rewards` are sign-clipped when `clip_rewards` is set;
  `FinishedEpisode.episode_return` is always the raw game score of the whole game.
- **Episodes**: only real game overs and the time limit (`max_episode_steps` agent steps; 27,000 =
  108,000 frames) produce `FinishedEpisode`s, with the length of the whole game in agent steps.
  As in Gymnasium's TimeLimit, `truncated` is set when the limit is reached, even on a game over.

Backends: `PythonAtariVectorEnv` steps one `ALEInterface` per simulator in a Python loop (any mix
of games, modes and difficulties; per-episode resampling); `NativeAtariVectorEnv` runs ale-py's
C++ vector env (one game in its default mode and difficulty; preprocessing in threads). With
no-op starts off they agree bit for bit (tests/test_atari.py), except the last frame of the final
observation of a real game over (terminal, so never bootstrapped from). Their no-op draws differ,
so runs are reproducible per backend. The Python backend fires on reset when the game's minimal
action set begins NOOP, FIRE; ale-py's native env also fires in Backgammon and Video Checkers.

`AleScreen` draws Gymnasium's own ALE envs for the ids resolved without this preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces

from benchbase import FinishedEpisode, StepResult, Task, lazy_import
from plugins.envs.atari.games import FULL_ACTION_COUNT, game_info, quiet_ale

if TYPE_CHECKING:
    import cv2
else:
    cv2 = lazy_import("cv2")  # OpenCV loads with the first frame: registering the family does not need it

FRAME_SIZE = 84
STACK = 4
_NOOP, _FIRE = 0, 1


@dataclass(frozen=True)
class Preprocessing:
    """The settings every backend applies (see the module docstring)."""

    max_episode_steps: int = 27_000
    noop_max: int = 30
    frame_skip: int = 4
    episodic_life: bool = True
    clip_rewards: bool = True
    repeat_action_probability: float = 0.0
    full_action_space: bool = False


@dataclass(frozen=True)
class Variant:
    """What a simulator runs: a ROM in one mode and difficulty."""

    rom: str
    mode: int
    difficulty: int


#: Domain randomisation: draws a simulator's next (task, variant) from its generator.
TaskSampler = Callable[[np.random.Generator], tuple[Task, Variant]]


def _seed_sequence(*keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) & 0xFFFF_FFFF_FFFF_FFFF for k in keys])


class AtariTaskVectorEnv:
    """The contract's bookkeeping over a backend that emulates and preprocesses.

    A backend implements `_reset_all(seed) -> (observations, lives)`, `_advance(actions) ->
    (observations, raw rewards, game over, lives, final observations or None, new tasks)` where
    simulators whose game ended are already reset, and `_restart(mask) -> (observations, lives,
    new tasks)` for the time limit.
    """

    def __init__(self, tasks: Sequence[Task], variants: Sequence[Variant], settings: Preprocessing, seed: int) -> None:
        if len(tasks) != len(variants):
            raise ValueError(f"{len(tasks)} tasks for {len(variants)} variants")
        self.num_envs = len(tasks)
        self.settings = settings
        self.observation_space = spaces.Box(0, 255, (STACK, FRAME_SIZE, FRAME_SIZE), np.uint8)
        counts = {
            FULL_ACTION_COUNT if settings.full_action_space else len(game_info(v.rom).minimal_actions) for v in variants
        }
        if len(counts) != 1:
            raise ValueError("games with different minimal action sets need full_action_space")
        self.action_space = spaces.Discrete(counts.pop())
        self._tasks = list(tasks)
        self._variants = list(variants)
        self._seed = int(seed)
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._lives = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, seed: int) -> np.ndarray:
        observations, lives = self._reset_all(int(seed))
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._lives[:] = lives
        return observations

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64, copy=False)
        observations, raw, game_over, lives, game_over_finals, new_tasks = self._advance(actions)
        self._returns += raw
        self._lengths += 1
        truncated = self._lengths >= self.settings.max_episode_steps
        terminated = game_over.copy()
        if self.settings.episodic_life:
            terminated |= lives < self._lives  # rows with a game over are terminated anyway
        self._lives[:] = lives
        rewards = (np.sign(raw) if self.settings.clip_rewards else raw).astype(np.float32)
        ended = terminated | truncated
        if not ended.any():
            return StepResult(observations, rewards, terminated, truncated, None, [])
        # A lost life continues the game: its final observation is the one it goes on from.
        final_observations = observations.copy()
        if game_over.any():
            final_observations[game_over] = game_over_finals[game_over]
        restart = truncated & ~game_over
        if restart.any():
            observations, restarted_lives, restarted_tasks = self._restart(restart)
            self._lives[restart] = restarted_lives[restart]
            new_tasks.update(restarted_tasks)
        finished = []
        for i in np.flatnonzero(game_over | truncated).tolist():
            finished.append(FinishedEpisode(i, float(self._returns[i]), int(self._lengths[i]), None, self._tasks[i]))
            self._returns[i] = 0.0
            self._lengths[i] = 0
        for i, task in new_tasks.items():
            self._tasks[i] = task
        return StepResult(observations, rewards, terminated, truncated, final_observations, finished)

    def close(self) -> None:
        pass

    # -- backend ------------------------------------------------------------------------------

    def _reset_all(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _advance(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict[int, Task]]:
        raise NotImplementedError

    def _restart(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, Task]]:
        raise NotImplementedError


def _shrink(frame: np.ndarray, out: np.ndarray) -> None:
    """210×160 grayscale -> 84×84 (area interpolation, as ale-py's vector env and Gymnasium do)."""
    out[...] = cv2.resize(frame, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)


class PythonAtariVectorEnv(AtariTaskVectorEnv):
    """One `ALEInterface` per simulator, stepped in a loop; any mix of games, modes, difficulties.

    ROMs are loaded (about 80 ms each) at the first `reset`; a later `reset` reloads them only
    when sticky actions make ALE's own generator matter. With a `sampler`, every reset (the
    first one included) draws the simulator's task, and its `FinishedEpisode` reports the task it
    ran.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        variants: Sequence[Variant],
        settings: Preprocessing,
        seed: int,
        sampler: TaskSampler | None = None,
    ) -> None:
        super().__init__(tasks, variants, settings, seed)
        self._sampler = sampler
        self._ales: list = [None] * self.num_envs
        self._loaded: list[Variant | None] = [None] * self.num_envs  # what each ALE has loaded
        self._screens: list[np.ndarray] = [np.zeros((2, 210, 160), np.uint8)] * self.num_envs
        self._actions: list[tuple[int, ...]] = [()] * self.num_envs
        self._fire: list[bool] = [False] * self.num_envs
        self._rngs: list[np.random.Generator] = []
        self._ale_seeds: list[int] = []
        self._stacks = np.zeros((self.num_envs, STACK, FRAME_SIZE, FRAME_SIZE), np.uint8)
        self._pending: dict[int, Task] = {}  # tasks drawn by resets, handed over with the next step

    def _reset_all(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        sequences = [_seed_sequence(self._seed, seed, i) for i in range(self.num_envs)]
        self._rngs = [np.random.default_rng(s) for s in sequences]
        self._ale_seeds = [int(s.generate_state(1)[0] & 0x7FFF_FFFF) for s in sequences]
        if self.settings.repeat_action_probability > 0:
            self._loaded = [None] * self.num_envs  # reseed ALE's sticky-action generator
        stacks = np.zeros_like(self._stacks)
        lives = np.zeros(self.num_envs, dtype=np.int64)
        for i in range(self.num_envs):
            lives[i] = self._new_game(i, stacks)
        for i, task in self._pending.items():
            self._tasks[i] = task
        self._pending = {}
        self._stacks = stacks
        return stacks.copy(), lives

    def _load(self, i: int, variant: Variant) -> None:
        """Make simulator i's ALE run `variant`: a ROM load (about 80 ms) only for another game."""
        loaded = self._loaded[i]
        if loaded == variant:
            return
        if loaded is None or loaded.rom != variant.rom:
            from ale_py import roms

            ale = quiet_ale()
            ale.setInt("random_seed", self._ale_seeds[i])
            ale.setFloat("repeat_action_probability", self.settings.repeat_action_probability)
            ale.loadROM(roms.get_rom_path(variant.rom))
            info = game_info(variant.rom)
            height, width = ale.getScreenDims()
            self._ales[i] = ale
            self._screens[i] = np.zeros((2, height, width), np.uint8)
            full = self.settings.full_action_space
            self._actions[i] = tuple(range(FULL_ACTION_COUNT)) if full else info.minimal_actions
            self._fire[i] = info.fire_on_reset
        self._ales[i].setMode(variant.mode)  # takes effect at the next reset_game
        self._ales[i].setDifficulty(variant.difficulty)
        self._loaded[i] = variant

    def _new_game(self, i: int, stacks: np.ndarray) -> int:
        """Start a real game on simulator i (drawing its task first when resampling); writes its
        first stack into `stacks[i]` and returns its lives."""
        if self._sampler is not None:
            task, variant = self._sampler(self._rngs[i])
            self._pending[i] = task
            self._variants[i] = variant
        self._load(i, self._variants[i])
        ale = self._ales[i]
        ale.reset_game()
        noops = int(self._rngs[i].integers(1, self.settings.noop_max + 1)) if self.settings.noop_max > 0 else 0
        for _ in range(noops):
            ale.act(_NOOP)
            if ale.game_over(with_truncation=False):
                ale.reset_game()
        if self._fire[i]:
            ale.act(_FIRE)
            if ale.game_over(with_truncation=False):
                ale.reset_game()
        screen = self._screens[i][0]
        ale.getScreenGrayscale(screen)
        stacks[i] = 0
        _shrink(screen, stacks[i, -1])
        return ale.lives()

    def _advance(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict[int, Task]]:
        n, skip = self.num_envs, self.settings.frame_skip
        rewards = np.zeros(n)
        game_over = np.zeros(n, dtype=bool)
        lives = np.zeros(n, dtype=np.int64)
        observed = skip - 2  # the frames of the max are the last two of the skip
        stacks = np.empty_like(self._stacks)
        stacks[:, :-1] = self._stacks[:, 1:]
        for i in range(n):
            ale, screens = self._ales[i], self._screens[i]
            action = self._actions[i][actions[i]]
            reward = 0
            for k in range(skip):
                reward += ale.act(action)
                if ale.game_over(with_truncation=False):
                    # As in ale-py's vector env, the frame that ends the game is not grabbed: the
                    # slots it did not reach keep the previous step's frames.
                    game_over[i] = True
                    break
                if k >= observed:
                    ale.getScreenGrayscale(screens[k - observed])
            rewards[i] = reward
            _shrink(np.maximum(screens[0], screens[1]), stacks[i, -1])
            lives[i] = ale.lives()
        finals = None
        if game_over.any():
            finals = stacks.copy()
            for i in np.flatnonzero(game_over).tolist():
                lives[i] = self._new_game(i, stacks)
        self._stacks = stacks
        pending, self._pending = self._pending, {}
        return stacks.copy(), rewards, game_over, lives, finals, pending

    def close(self) -> None:
        self._ales = [None] * self.num_envs

    def render(self, simulator: int) -> np.ndarray:
        """The emulator's colour screen of `simulator` (for `bench eval --video`)."""
        return np.asarray(self._ales[simulator].getScreenRGB(), dtype=np.uint8)
        self._loaded = [None] * self.num_envs

    def _restart(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, Task]]:
        lives = np.zeros(self.num_envs, dtype=np.int64)
        for i in np.flatnonzero(mask).tolist():
            lives[i] = self._new_game(i, self._stacks)
        pending, self._pending = self._pending, {}
        return self._stacks.copy(), lives, pending


class AleScreen:
    """Frames of Gymnasium's ALE envs (`ale_py.env.AtariEnv`, run through `GymnasiumTaskVectorEnv`):
    the emulator's colour screen, with no `render_mode` needed."""

    def frame(self, simulator: int, env: Any) -> np.ndarray:
        return np.asarray(env.ale.getScreenRGB(), dtype=np.uint8)

    def close(self) -> None:
        pass


class NativeAtariVectorEnv(AtariTaskVectorEnv):
    """ale-py's C++ `AtariVectorEnv`: one game in its default mode and difficulty, stepped and
    preprocessed in `threads` threads. Its own episodic life, reward clipping and time limit are
    off: the bookkeeping above applies ours, from raw rewards and lives."""

    def __init__(
        self, tasks: Sequence[Task], variant: Variant, settings: Preprocessing, seed: int, threads: int = 1
    ) -> None:
        super().__init__(tasks, [variant] * len(tasks), settings, seed)
        from ale_py.vector_env import AtariVectorEnv
        from gymnasium.vector import AutoresetMode

        quiet_ale()  # quiets ALE's logger for the simulators the vector env creates
        self._vector = AtariVectorEnv(
            variant.rom,
            self.num_envs,
            num_threads=threads,
            batch_size=0,
            # Our time limit restarts simulators itself; ALE's must never come first.
            max_num_frames_per_episode=2**31 - 1,
            repeat_action_probability=settings.repeat_action_probability,
            full_action_space=settings.full_action_space,
            autoreset_mode=AutoresetMode.SAME_STEP,
            img_height=FRAME_SIZE,
            img_width=FRAME_SIZE,
            grayscale=True,
            stack_num=STACK,
            frameskip=settings.frame_skip,
            maxpool=True,
            noop_max=settings.noop_max,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            use_fire_reset=True,
        )

    def _reset_all(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        seeds = np.array(
            [_seed_sequence(self._seed, seed, i).generate_state(1)[0] & 0x7FFF_FFFF for i in range(self.num_envs)],
            dtype=np.int64,
        )
        observations, info = self._vector.reset(seed=seeds)
        return observations, np.asarray(info["lives"], dtype=np.int64)

    def _advance(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict[int, Task]]:
        observations, rewards, terminated, truncated, info = self._vector.step(actions)
        game_over = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        finals = info.get("final_obs") if game_over.any() else None
        lives = np.asarray(info["lives"], dtype=np.int64)
        return observations, rewards.astype(np.float64), game_over, lives, finals, {}

    def _restart(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, Task]]:
        observations, info = self._vector.reset(options={"reset_mask": mask})
        return observations, np.asarray(info["lives"], dtype=np.int64), {}

    def close(self) -> None:
        self._vector.close()
