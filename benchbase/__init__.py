"""benchbase: a plugin-based benchmarking suite for decentralised, multitask deep RL.

``import benchbase`` is the plugin API: everything a plugin needs is a name of this package::

    import benchbase

    class Star(benchbase.Topology):
        name = "star"
        ...

    @benchbase.hookimpl
    def register_topologies(register):
        register(Star())

The names load on first use, so importing benchbase stays cheap (the command line imports it
before it parses anything; torch loads only when a parameter helper is touched or a learner runs:
plugins name it through `lazy_import`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # hooks
    "hookimpl": "benchbase.api.hookspecs",
    "Register": "benchbase.api.hookspecs",
    # component contracts
    "Component": "benchbase.api.contracts",
    "Algorithm": "benchbase.api.contracts",
    "Topology": "benchbase.api.contracts",
    "EnvFamily": "benchbase.api.contracts",
    "ReplayStrategy": "benchbase.api.contracts",
    "TopologyParams": "benchbase.api.contracts",
    "EnvFamilyParams": "benchbase.api.contracts",
    "ConsensusParams": "benchbase.api.contracts",
    "GossipParams": "benchbase.api.contracts",
    "Task": "benchbase.api.contracts",
    "FinishedEpisode": "benchbase.api.contracts",
    "StepResult": "benchbase.api.contracts",
    "EnvBlock": "benchbase.api.contracts",
    "ConcatenatedEnvs": "benchbase.api.env_block",
    "TaskVectorEnv": "benchbase.api.contracts",
    "Renderable": "benchbase.api.contracts",
    "ResolvedNames": "benchbase.api.contracts",
    "Learner": "benchbase.api.contracts",
    "LearnerBlock": "benchbase.api.contracts",
    # live loggers (`bench run --logger`)
    "Logger": "benchbase.api.contracts",
    "LoggerParams": "benchbase.api.contracts",
    "LiveRun": "benchbase.api.contracts",
    "MetricRow": "benchbase.api.contracts",
    "LearnerSpec": "benchbase.api.contracts",
    "IterationOutput": "benchbase.api.contracts",
    "params_of": "benchbase.api.contracts",
    "space_kind": "benchbase.api.contracts",
    "without_resampling": "benchbase.api.contracts",
    # typed parameters
    "param": "benchbase.api.params",
    "NoParams": "benchbase.api.params",
    # replay protocols and the mix an off-policy learner samples from
    "Segment": "benchbase.api.replay",
    "Scorer": "benchbase.api.replay",
    "SegmentBuffer": "benchbase.api.replay",
    "ReplayParams": "benchbase.api.replay",
    "ReplayMix": "benchbase.api.replay",
    "BatchPreparer": "benchbase.api.replay",
    # a model's parameters as one flat buffer (what the core mixes)
    "FlatParameters": "benchbase.comm.flat",
    # a policy `bench export` wrote, as a callable observations -> actions
    "load_policy": "benchbase.evaluate.policy",
    # a module imported on first use (torch, kept out of plugin registration)
    "lazy_import": "benchbase.api.lazy",
    # errors
    "UserError": "benchbase.errors",
    "unknown_name": "benchbase.errors",
    "close_match": "benchbase.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'benchbase' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from benchbase.api.contracts import (
        Algorithm,
        Component,
        ConsensusParams,
        EnvBlock,
        EnvFamily,
        EnvFamilyParams,
        FinishedEpisode,
        GossipParams,
        IterationOutput,
        Learner,
        LearnerBlock,
        LearnerSpec,
        LiveRun,
        Logger,
        LoggerParams,
        MetricRow,
        Renderable,
        ReplayStrategy,
        ResolvedNames,
        StepResult,
        Task,
        TaskVectorEnv,
        Topology,
        TopologyParams,
        params_of,
        space_kind,
        without_resampling,
    )
    from benchbase.api.env_block import ConcatenatedEnvs
    from benchbase.api.hookspecs import Register, hookimpl
    from benchbase.api.lazy import lazy_import
    from benchbase.api.params import NoParams, param
    from benchbase.api.replay import BatchPreparer, ReplayMix, ReplayParams, Scorer, Segment, SegmentBuffer
    from benchbase.comm.flat import FlatParameters
    from benchbase.errors import UserError, close_match, unknown_name
    from benchbase.evaluate.policy import load_policy
