"""The contracts between the core and its plugins.

Four kinds of component, each a small class that a plugin subclasses and hands to a `register`
callback (see `benchbase.api.hookspecs`):

- `Algorithm`      builds a per-process `Learner` (collect, update, expose parameters to mix);
- `Topology`       pure data: who receives from whom, per iteration if time-varying;
- `EnvFamily`      a seeded distribution over tasks and a vectorised env for a list of tasks;
- `ReplayStrategy` a buffer of trajectory segments (off-policy algorithms; `none` otherwise).

Every component has a `name`, a one-line `description` and a `Params` dataclass of tunables
(`benchbase.api.params`). Components are stateless: per-run state lives in what they build.
Their metadata may be class attributes (one class per component) or instance attributes (one
class for many components, e.g. a family per base environment and split, set in `__init__`): the
core only reads it from the registered instance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

from benchbase.api.params import NoParams, param


class Component:
    """Shared by every plugin kind: what the registry, grid and `bench plugins` read."""

    name: str
    description: str = ""
    #: The frozen dataclass of tunables (`param` fields); the class, not an instance.
    Params: type = NoParams
    aliases: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Topologies


@dataclass(frozen=True)
class TopologyParams:
    """Base of every topology's parameters: the core turns the graph into mixing weights."""

    weights: Literal["auto", "metropolis", "uniform", "push-sum"] = param(
        "auto",
        "mixing weights: metropolis (doubly stochastic on any undirected graph), uniform "
        "1/(in-degree+1) (the Diff-DAC original; keeps the average only on regular graphs), or "
        "push-sum (each sender splits its parameters and a scalar weight evenly over itself and "
        "its out-neighbours; exact average on any directed or time-varying graph); auto = "
        "metropolis on undirected graphs, push-sum on directed ones",
    )


class Topology(Component):
    """Who talks to whom. Pure data: never touches torch.distributed.

    `build` returns an N×N 0/1 integer array `in_adjacency` with `in_adjacency[i, j] == 1` when
    learner i receives learner j's parameters (zero diagonal; symmetric unless `directed`).
    A time-varying topology returns a sequence of such arrays: the k-th is used at iterations t
    with t % len(sequence) == k. The core validates shape, symmetry and connectivity and derives
    the mixing weights (`benchbase.comm.mixing_plan`).
    """

    Params: type = TopologyParams
    directed: bool = False
    #: False for topologies that are meant to be disconnected (isolated learners).
    requires_connected: bool = True

    def learner_count(self, requested: int, params: Any) -> int:
        """How many learner processes a cell with `requested` learners runs (centralised: 1)."""
        return requested

    def min_learners(self, params: Any) -> int:
        """The fewest learner processes the topology means anything with: a graph that connects
        learners needs two (one learner on a ring is an isolated learner mislabelled)."""
        return 2 if self.requires_connected else 1

    def build(self, n_learners: int, params: Any, rng: np.random.Generator) -> np.ndarray | Sequence[np.ndarray]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Environment families


@dataclass(frozen=True)
class Task:
    """One member of a family: the parameters it sets are recorded with every episode row."""

    task_id: str
    parameters: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FinishedEpisode:
    """An episode that ended during a step: raw (unnormalised, unclipped) return."""

    simulator: int
    episode_return: float
    episode_length: int
    success: bool | None
    task: Task


class StepResult(NamedTuple):
    observations: np.ndarray  # next observations; simulators whose episode ended are already reset
    rewards: np.ndarray  # float32 [P]: what the learner trains on (raw, or shaped by the family: Atari clips)
    terminated: np.ndarray  # bool [P]: a terminal state (no bootstrap)
    truncated: np.ndarray  # bool [P]: cut by a time limit (bootstrap from final_observations)
    final_observations: np.ndarray | None  # [P, ...]; rows valid where terminated | truncated
    finished: list[FinishedEpisode]


class TaskVectorEnv(Protocol):
    """P simulators stepped together, each running its own task, resetting itself when done."""

    num_envs: int
    observation_space: Any  # gymnasium.Space of one simulator
    action_space: Any  # gymnasium.Space of one simulator

    def reset(self, seed: int) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


class EnvBlock(Protocol):
    """The simulators of a learner block's K learners, stepped as one vector env of Σ P_k.

    `members[k]` is learner k's own `TaskVectorEnv` (its spaces, `reset`, and `state_dict` and
    `load_state_dict` where the family can save its simulators), so each learner seeds,
    checkpoints and resumes its simulators as a learner of its own process does; `step` steps
    every member at once, actions and results concatenated in member order. A finished
    episode's `simulator` is its index in the block (member k's simulator j is Σ_{i<k} P_i + j).
    """

    members: Sequence[TaskVectorEnv]
    num_envs: int

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


@runtime_checkable
class Renderable(Protocol):
    """What a `TaskVectorEnv` that can draw itself adds (optional: `bench eval --video` needs it).

    A protocol of its own rather than a default on `TaskVectorEnv`: vector envs satisfy that
    protocol by shape, without subclassing it, so only `isinstance(env, Renderable)` can tell."""

    def render(self, simulator: int) -> np.ndarray:
        """An (H, W, 3) uint8 picture of `simulator`'s current state."""
        ...


@dataclass(frozen=True)
class ResolvedNames:
    """A pattern of names a plugin resolves on demand, as one row of `bench plugins`."""

    pattern: str  # e.g. "<Game>NoFrameskip-v4, ALE/<Game>-v5"
    provider: str  # what supplies them, e.g. "ale-py"
    description: str


@dataclass(frozen=True)
class EnvFamilyParams:
    """Base of every family's parameters."""

    resample: bool = param(
        False,
        "draw a new task at every episode reset (domain randomisation) instead of one fixed task per learner",
    )


def without_resampling(params: Any) -> Any:
    """`params` with per-episode resampling off (evaluation, probing), for families whose Params
    may or may not derive from EnvFamilyParams."""
    if dataclasses.is_dataclass(params) and any(f.name == "resample" for f in dataclasses.fields(params)):
        return dataclasses.replace(params, resample=False)
    return params


class EnvFamily(Component):
    """A named, seeded distribution over tasks of one base environment."""

    Params: type = EnvFamilyParams
    #: Held-out evaluation splits besides "train" (the learner's own tasks), e.g. ("D", "R", "E").
    splits: tuple[str, ...] = ()
    #: (random policy score, reference score) for normalisation; None where success is defined.
    score_range: tuple[float, float] | None = None
    #: One line: what counts as success, or "" when the family defines none.
    success_criterion: str = ""
    #: Names the family's plugin resolves on demand (`resolve_env_family`) besides the registered
    #: ones; `bench plugins` lists them after the registered components.
    resolved_names: tuple[ResolvedNames, ...] = ()

    def task_score_range(self, task_id: str) -> tuple[float, float] | None:
        """(random, reference) of one task, for families whose tasks score on different scales
        (a set of Atari games); None: the family's `score_range` applies to every task."""
        return None

    def training_tasks(self, params: Any, count: int, seed: int) -> list[Task]:
        """`count` tasks (one per learner), reproducible from `seed`."""
        raise NotImplementedError

    def evaluation_tasks(self, params: Any, split: str, count: int, seed: int) -> list[Task]:
        """`count` held-out tasks of `split`, reproducible from `seed`."""
        raise NotImplementedError

    def make_env(self, params: Any, tasks: Sequence[Task], seed: int) -> TaskVectorEnv:
        """A vector env with one simulator per entry of `tasks`, seeded with `seed`."""
        raise NotImplementedError

    def make_env_block(self, params: Any, tasks: Sequence[Sequence[Task]], seeds: Sequence[int]) -> EnvBlock:
        """A learner block's simulators: member k is `make_env(params, tasks[k], seeds[k])`, and
        stepping them together gives what stepping each would. The default steps the members
        one after another (`benchbase.api.env_block.ConcatenatedEnvs`); a family whose simulators
        vectorise across members overrides it to step them in one call."""
        from benchbase.api.env_block import ConcatenatedEnvs

        return ConcatenatedEnvs([self.make_env(params, own, seed) for own, seed in zip(tasks, seeds, strict=True)])


# --------------------------------------------------------------------------------------------
# Algorithms


@dataclass(frozen=True)
class LearnerSpec:
    """What the core hands an algorithm to build one learner process's learner."""

    env: TaskVectorEnv
    rank: int
    n_learners: int
    seed: int
    device: Any  # torch.device
    replay: Any = None  # a replay mix for off-policy algorithms; None for on-policy ones
    #: This learner's share of the cell's env-step budget (for schedules such as lr annealing);
    #: 0 when unknown (a learner built outside a cell).
    env_steps_budget: int = 0


@dataclass
class IterationOutput:
    """One collect-and-update iteration."""

    env_steps: int
    finished: list[FinishedEpisode]
    metrics: dict[str, float]


class Learner:
    """Per-process learner. The core calls `iterate`, then mixes `parameters_buffer()` in place.

    A base class, not a protocol: the core calls every method here directly, so a learner must
    derive from it (the built-in ones do, through `plugins.algorithms.common.rollout`) and
    override what it supports. `iterate`, `parameters_buffer` and `act_greedy` are required; the
    rest default to "not supported" (`checkpointable`, `has_sampled_policy`) or to doing nothing
    (`close`).
    """

    #: True when `state_dict` and `load_state_dict` are implemented: the core then checkpoints the
    #: learner (resume, `bench eval`, `--init-from`); otherwise a stopped cell starts over.
    checkpointable: bool = False
    #: True when `act_sampled` is implemented (`bench eval --stochastic`).
    has_sampled_policy: bool = False

    def iterate(self) -> IterationOutput:
        """One collect-and-update iteration."""
        raise NotImplementedError

    def parameters_buffer(self) -> Any:
        """One flat tensor that holds every value to mix; the model's parameters are views of it,
        so writing it writes the model."""
        raise NotImplementedError

    def model_parameters(self) -> Any:
        """The model's parameters: `parameters_buffer()` or a prefix of it, when values that are
        mixed but not parameters follow them (e.g. mixed normalisation statistics). Consensus is
        measured on these. Default: the whole buffer."""
        return self.parameters_buffer()

    def act_greedy(self, observations: np.ndarray) -> np.ndarray:
        """The policy's most likely actions for a batch of raw observations (evaluation)."""
        raise NotImplementedError

    def act_sampled(self, observations: np.ndarray) -> np.ndarray:
        """Actions drawn from the policy (stochastic evaluation); only when `has_sampled_policy`."""
        raise NotImplementedError(f"{type(self).__name__} has no sampled policy")

    def state_dict(self, replay: bool = False) -> dict[str, Any]:
        """Everything needed to carry on exactly; only when `checkpointable`. `replay`: include
        the replay buffers' contents (learners that train from replay; they can be large). Its
        tensors and arrays are copies, or data the learner never writes again: a background
        thread writes them to disk while training goes on."""
        raise NotImplementedError(f"{type(self).__name__} cannot be checkpointed")

    def load_state_dict(self, state: dict[str, Any], *, mode: Literal["resume", "init", "model"] = "resume") -> None:
        """Carry on from `state_dict()`'s output. "resume" restores everything; "init" (a new run
        starting from a checkpoint) the model, normalisation statistics and optimiser moments,
        keeping this learner's hyperparameters; "model" (evaluation) the model and statistics."""
        raise NotImplementedError(f"{type(self).__name__} cannot be checkpointed")

    def close(self) -> None:
        """Release what the learner holds besides its env (threads, buffers). Default: nothing."""


class LearnerBlock:
    """Several learners of one cell in one process, their parameters stacked along a leading
    learner dimension so that they act and update with batched math (DESIGN §6).

    `learners[k]` is learner k of the block as a `Learner` (its rows of the stacked buffers:
    acting for evaluation, checkpoints, its model), and `parameters()` the [K, numel] buffer whose
    row k is `learners[k].parameters_buffer()`: the core mixes it in place after each `iterate`.
    Each learner keeps its own optimiser state, normalisers, simulators and result rows.
    """

    learners: list[Learner]

    def iterate(self) -> list[IterationOutput]:
        """One collect-and-update iteration of every learner of the block, in block order."""
        raise NotImplementedError

    def parameters(self) -> Any:
        """The [K, numel] stacked buffer of every value to mix (row k: learner k's)."""
        raise NotImplementedError

    def close(self) -> None:
        for learner in self.learners:
            learner.close()


@dataclass(frozen=True)
class ConsensusParams:
    """Base of the parameters of every algorithm that communicates; read by the core's mixing."""

    staleness: int = param(
        0,
        "staleness bound K: a learner mixes with the newest message from each in-neighbour and "
        "waits only when it is more than K iterations old; 0 = synchronous diffusion",
        min=0,
    )
    link_drop: float = param(
        0.0,
        "unreliable links: probability in [0, 1) that a learner skips publishing its parameters "
        "in an iteration (its neighbours mix without it; push-sum keeps the skipped share)",
        min=0.0,
        below=1.0,
    )


@dataclass(frozen=True)
class GossipParams(ConsensusParams):
    """Gossip algorithms (GALA) talk to `num_peers` of their topology's out-neighbours per
    iteration, cycling through them in order of ring offset (r+1, r+2, …); mixing is push-sum."""

    num_peers: int = param(
        1, "out-peers each learner sends to per iteration, cycling through its topology neighbours", min=1
    )


class Algorithm(Component):
    """A learning algorithm. Declares what it supports so the grid can refuse bad pairings."""

    #: "diffusion" (adapt-then-combine with every neighbour), "gossip" (`GossipParams`: a few
    #: peers per iteration, push-sum) or "none".
    consensus: str = "diffusion"
    #: Action spaces it can act in: "discrete" (gymnasium Discrete) and "continuous" (a 1-D Box).
    action_spaces: frozenset[str] = frozenset({"discrete", "continuous"})
    #: Observations it can take: "vector" (a 1-D Box) and "image" (a 3-D Box of frames). Other
    #: spaces (Discrete, Tuple, Dict, 2-D Box) are refused by the grid unless declared here.
    observation_kinds: frozenset[str] = frozenset({"vector"})
    #: Parameters that only shape the network for vector observations (e.g. {"hidden"} when image
    #: observations go through a fixed CNN): setting one for an env with images is refused.
    vector_only_params: frozenset[str] = frozenset()
    #: True for off-policy algorithms trained from a replay mix; their Params then declare an
    #: integer `batch_size` (segments per update), which the grid splits among the mix's strategies.
    uses_replay: bool = False

    def make_learner(self, params: Any, spec: LearnerSpec) -> Learner:
        raise NotImplementedError

    #: Observation kinds for which `make_learner_block` builds a block (empty: no block form).
    block_observation_kinds: frozenset[str] = frozenset()

    def make_learner_block(
        self, params: Any, specs: list[LearnerSpec], envs: EnvBlock | None = None
    ) -> LearnerBlock | None:
        """Learners `specs` (consecutive ranks of one cell) as one block in this process; None when
        the algorithm has no block form for them (the core then runs one learner per process).
        `envs` steps every learner's simulators at once (`specs[k].env` is `envs.members[k]`);
        None: the specs' envs, stepped in turn."""
        return None

    def steps_per_simulator(self, params: Any) -> int | None:
        """Env steps each simulator takes per iteration (an on-policy rollout's length, an unroll),
        so a budget smaller than one iteration of a cell is refused before it runs. None: unknown."""
        return None

    def model_bytes(self, params: Any, observation_space: Any, action_space: Any) -> int | None:
        """Bytes of one learner's model parameters, so a network too large for the machine (or
        for a GPU, with the learners it would host) is refused before the run. None when unknown.
        Called while `bench run` checks a grid: count from the spaces, without importing torch."""
        return None

    def segment_bytes(self, params: Any, observation_space: Any, action_space: Any) -> int | None:
        """Off-policy algorithms: bytes of one stored segment, so that the memory a replay buffer
        will take is reported before the run. None when unknown."""
        return None


# --------------------------------------------------------------------------------------------
# Replay strategies


class ReplayStrategy(Component):
    """Stores trajectory segments and samples them. `none` is the on-policy placeholder."""

    #: False only for `none`, which stores nothing.
    stores_segments: bool = True

    def make_buffer(self, params: Any, seed: int) -> Any:
        raise NotImplementedError


KINDS: dict[str, type[Component]] = {
    "algorithm": Algorithm,
    "topology": Topology,
    "env": EnvFamily,
    "replay": ReplayStrategy,
}


def params_of(component: Component, overrides: Mapping[str, Any] | None = None) -> Any:
    """The component's parameters with `overrides` applied (typed and checked)."""
    from benchbase.api.params import resolve

    return resolve(component.Params, overrides or {}, component.name)


def space_kind(space: Any) -> str:
    """'discrete' or 'continuous' for a gymnasium action space."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return "discrete"
    if isinstance(space, spaces.Box):
        return "continuous"
    return type(space).__name__


# --------------------------------------------------------------------------------------------
# Loggers (live metrics of a running cell; not part of a cell's config, so not one of KINDS)


@dataclass(frozen=True)
class LoggerParams:
    """Base of every logger's parameters: how often it is given a row."""

    every_s: float = param(
        1.0,
        "at least this many seconds between the metric rows this logger is given (0: every metric row, "
        "about 100 per learner and cell); a learner's last row is always given",
        min=0,
    )


@dataclass(frozen=True)
class LiveRun:
    """Which learner a logger's output belongs to."""

    out_dir: str  # the run folder
    grid: str  # the run folder's name (results/grid-<id> by default): what groups a grid's cells
    cell_id: str
    learner: int  # the learner's rank in the cell
    learners: int  # learners in the cell
    config: Mapping[str, Any]  # the cell's resolved config


@dataclass(frozen=True)
class MetricRow:
    """One metric row of a learner: what its rows of the metrics table hold at one iteration."""

    iteration: int
    env_step: int  # this learner's env steps
    cell_env_step: int  # env_step × learners: the x axis the report uses
    wall_time_s: float
    values: Mapping[str, float]  # metric → value, as in the metrics table's `metric` and `value` columns


class LogWriter(Protocol):
    """What `Logger.open` returns. It is called from a thread of the learner process of its own, so it
    may be slow; an exception disables it (the learner reports it once and trains on)."""

    def write(self, row: MetricRow) -> None: ...

    def close(self) -> None: ...


class Logger(Component):
    """Sees a running cell: each learner process opens the chosen loggers and gives them its metric rows,
    at most every `every_s` seconds (`--logger NAME[:key=value]`, or `loggers` in a grid file)."""

    Params: type = LoggerParams
    #: Modules the logger imports (checked before a run starts) and the pip requirement that provides them.
    requires: tuple[str, ...] = ()
    install: str = ""

    def missing(self) -> str | None:
        """One line naming what to install when a required module is absent; None when all are there."""
        from importlib.util import find_spec

        absent = [module for module in self.requires if find_spec(module) is None]
        if not absent:
            return None
        return f"logger {self.name} needs the {', '.join(absent)} package: pip install '{self.install or absent[0]}'"

    def open(self, params: Any, run: LiveRun) -> LogWriter:
        raise NotImplementedError
