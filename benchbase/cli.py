"""The `bench` command: thin — it parses, then calls the core.

Conventions of every command: `-h`/`--help`, `bench --version` (`-V`), shell completion
(`bench --install-completion`), plain flags shown without a type, and the defaults of the grid's
settings shown in `bench run --help`. Nothing here imports torch before it is needed: `bench -h`,
`bench --version` and a refused option answer at once.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from benchbase.errors import UserError


def _without_flag_types(params: list) -> list:
    """typer's rich help shows a plain flag's type (`--dry-run <bool>`) though a flag takes no value;
    an empty metavar leaves its type column empty (the plain-text help already omits it)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list:
        return _without_flag_types(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list:
        return _without_flag_types(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Benchmark decentralised, multitask deep RL: algorithms × topologies × env families × replay.",
)
_selection: dict[str, tuple[str, ...] | None] = {"only": None, "blocked": ()}

#: The grid settings a run gets when neither the options nor a --grid file give them: GridSpec's defaults
#: (benchbase/grid/spec.py), and the embedded default grid's (benchbase/grid/default_grid.toml, what runs when
#: no axis is given). Written out because importing the grid module costs numpy at start-up;
#: tests/test_cli_conventions.py checks that they agree with both.
SPEC_DEFAULTS: dict[str, int] = {
    "seeds": 1,
    "learners": 4,
    "envs_per_learner": 8,
    "env_steps": 100_000,
    "evaluations": 10,
}
DEFAULT_GRID_VALUES: dict[str, int] = {
    "seeds": 2,
    "learners": 4,
    "envs_per_learner": 8,
    "env_steps": 200_000,
    "evaluations": 10,
}


def _shown_default(key: str) -> str:
    """The default `bench run --help` shows for a grid setting whose option default is None (not given)."""
    given, of_default_grid = SPEC_DEFAULTS[key], DEFAULT_GRID_VALUES[key]
    if given == of_default_grid:
        return f"{given:,}"
    return f"{given:,}; {of_default_grid:,} in the default grid"


def version_line() -> str:
    """'benchbase 0.1.0 (torch 2.5.1, Python 3.11.9)', read from the installed metadata: torch is not imported."""
    from importlib import metadata

    import benchbase

    def installed(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    own = installed("benchbase") or benchbase.__version__  # a source tree that is not installed
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"benchbase {own} (torch {installed('torch') or 'not installed'}, Python {python})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


def _split(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(part.strip() for part in value.split(",") if part.strip())


@app.callback()
def _global_options(
    plugins: Optional[str] = typer.Option(
        None, "--plugins", envvar="BENCHBASE_PLUGINS", help="Load only these plugins (comma-separated names)."
    ),
    block_plugins: Optional[str] = typer.Option(
        None, "--block-plugins", envvar="BENCHBASE_BLOCK_PLUGINS", help="Do not load these plugins (comma-separated)."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        is_eager=True,
        expose_value=False,
        callback=_print_version,
        help="Print the versions of benchbase, torch and Python, and exit.",
    ),
) -> None:
    _selection["only"] = _split(plugins)
    _selection["blocked"] = _split(block_plugins) or ()


def _console(stderr: bool = False) -> Console:
    """Rich console; when not a terminal (CI, pipes) wide enough that tables are not truncated."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 160)


def _start_learners_forkserver(dry_run: bool, launcher: str) -> None:
    """Start the learners' forkserver when this process will launch learners itself, before it
    imports torch: the forkserver's imports (torch, the plugins; 2.3–2.6 s of CPU) then run beside
    this process's own instead of after them."""
    from benchbase.run.environment import under_torchrun

    if not dry_run and launcher == "local" and not under_torchrun():
        from benchbase.run.forkserver import warm_up

        warm_up()


def _registry():
    from benchbase.api.registry import load_registry

    only = _selection["only"]
    registry = load_registry(only=set(only) if only is not None else None, blocked=set(_selection["blocked"] or ()))
    registry.check()
    return registry


@app.command(cls=_Command)
def plugins(
    name: Optional[str] = typer.Argument(
        None,
        metavar="NAME",
        help="Show this one in full: kind, provider, description and every parameter with its type, default and "
        "help. A name or alias, a Gymnasium id, or KIND:NAME when several kinds use the name.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list; with NAME, one object) instead of text."),
) -> None:
    """List every registered algorithm, topology, env family and replay strategy, or show one."""
    registry = _registry()
    if name is not None:
        return _show_plugin(registry, name, as_json)
    rows = registry.listing()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        for error in registry.errors:
            print(f"warning: {error}", file=sys.stderr)
        return
    console = _console()
    table = Table(title="benchbase plugins", show_lines=False)
    for column in ("kind", "name", "provider", "description", "parameters"):
        table.add_column(column, overflow="fold")
    for row in rows:
        parameters = ", ".join(f"{p['name']}={p['default']}" for p in row["parameters"])
        name = row["name"] + (f" ({', '.join(row['aliases'])})" if row["aliases"] else "")
        table.add_row(row["kind"], name, row["provider"], row["description"], parameters)
    for names in registry.resolved_names():  # what plugins resolve on demand, never registered
        table.add_row("env", names.pattern, names.provider, names.description, "")
    table.add_row(
        "env",
        "<any Gymnasium id>",
        "gymnasium",
        "a registered Gymnasium id (e.g. CartPole-v1) as a one-task family",
        "",
    )
    console.print(table)
    for error in registry.errors:
        console.print(f"[yellow]warning:[/yellow] {error}", markup=True, highlight=False)


#: How a `bench run` sets a component's parameters, by kind.
_AXIS_OPTION = {"algorithm": "-a", "topology": "-t", "env": "-e", "replay": "-r"}


def _plugin_rows(registry, text: str) -> list[dict[str, Any]]:
    """The listing rows `bench plugins NAME` shows: the component of each kind called NAME (or an
    alias), an env id a plugin resolves on demand, or KIND:NAME; a UserError with a close match."""
    from benchbase.errors import close_match, unknown_name

    kind, colon, name = text.partition(":")
    kinds = list(registry.components)
    if not colon:
        kind, name = "", text
    elif kind not in kinds:
        raise UserError(f'plugin "{text}": expected NAME or KIND:NAME, KIND one of {", ".join(kinds)}')
    rows = [
        row
        for row in registry.listing()
        if (not kind or row["kind"] == kind) and (row["name"] == name or name in row["aliases"])
    ]
    if not rows and kind in ("", "env"):
        rows = _resolved_env_row(registry, name)
    if rows:
        return rows
    choices = {
        label
        for table_kind, table in registry.components.items()
        if not kind or table_kind == kind
        for label in [*table, *registry.aliases[table_kind]]
    }
    if kind:
        raise unknown_name(kind, name, choices)
    suggestion = close_match(name, choices)  # the names of all kinds are too many for one line
    hint = f'; did you mean "{suggestion}"?' if suggestion else ""
    raise UserError(f'unknown plugin "{name}"{hint} (`bench plugins` lists all {len(choices)} names)')


def _resolved_env_row(registry, name: str) -> list[dict[str, Any]]:
    """A one-row listing of an env id that a plugin resolves on demand (CartPole-v1, ALE/Pong-v5), or []."""
    from benchbase.api.params import describe

    for hook in reversed(registry.manager.hook.resolve_env_family.get_hookimpls()):  # pluggy's calling order
        family = hook.function(name=name)
        if family is None:
            continue
        provider = dict(registry.loaded).get(hook.plugin_name, "")
        parameters = [
            {"name": p.name, "type": p.type, "default": p.default, "help": p.help} for p in describe(family.Params)
        ]
        row = {"kind": "env", "name": name, "aliases": list(family.aliases), "provider": provider}
        return [{**row, "plugin": hook.plugin_name, "description": family.description, "parameters": parameters}]
    return []


def _show_plugin(registry, text: str, as_json: bool) -> None:
    """`bench plugins NAME`: one component in full, as text or JSON."""
    rows = _plugin_rows(registry, text)
    if as_json:
        if len(rows) > 1:
            kinds = " or ".join(f"{row['kind']}:{row['name']}" for row in rows)
            raise UserError(f'"{text}" names {len(rows)} plugins of different kinds: give one of {kinds}')
        typer.echo(json.dumps(rows[0], indent=2, default=str))
        return
    console = _console()
    for row in rows:
        aliases = f" (alias {', '.join(row['aliases'])})" if row["aliases"] else ""
        heading = Text(row["name"], style="bold") + Text(f"{aliases}: {row['kind']}")
        console.print(heading + Text(f", from {row['provider']} (plugin {row['plugin']})"), highlight=False)
        console.print(row["description"], highlight=False)
        if not row["parameters"]:
            console.print("no parameters", highlight=False)
            continue
        option = _AXIS_OPTION[row["kind"]]
        table = Table(
            title=f"parameters: {option} {row['name']}:KEY=VALUE,… or --set {row['name']}.KEY=VALUE",
            title_justify="left",
        )
        for column in ("parameter", "type", "default", "help"):
            table.add_column(column, overflow="fold")
        for parameter in row["parameters"]:
            default = "none" if parameter["default"] is None else str(parameter["default"])
            table.add_row(parameter["name"], parameter["type"], default, parameter["help"])
        console.print(table)


@app.command(cls=_Command)
def run(
    algorithm: list[str] = typer.Option(
        [],
        "--algorithm",
        "-a",
        help="Algorithm axis entry, NAME[:key=value,…]; repeatable.",
    ),
    topology: list[str] = typer.Option(
        [],
        "--topology",
        "-t",
        help="Topology axis entry, e.g. ring or random:p=0.3; repeatable.",
    ),
    env: list[str] = typer.Option(
        [],
        "--env",
        "-e",
        help="Env family axis entry, e.g. random-cartpole or CartPole-v1; repeatable.",
    ),
    replay: list[str] = typer.Option(
        [],
        "--replay",
        "-r",
        help="Replay axis entry (none for on-policy algorithms), or a mix by ratio: "
        "queue:capacity=4,ratio=0.5+uniform:ratio=0.5; repeatable.",
    ),
    # None means "not given" (a --grid file's value, or the default, applies): the defaults are only shown.
    seeds: Optional[int] = typer.Option(
        None, "--seeds", help="Number of seeds (0..N-1).", show_default=_shown_default("seeds")
    ),
    learners: Optional[int] = typer.Option(
        None, "--learners", help="Learners per cell (tasks per cell).", show_default=_shown_default("learners")
    ),
    envs_per_learner: Optional[int] = typer.Option(
        None, "--envs-per-learner", help="Simulators per learner.", show_default=_shown_default("envs_per_learner")
    ),
    env_steps: Optional[int] = typer.Option(
        None,
        "--env-steps",
        help="Budget: total env steps across a cell's learners.",
        show_default=_shown_default("env_steps"),
    ),
    evaluations: Optional[int] = typer.Option(
        None,
        "--evaluations",
        help="Evaluations per cell, evaluation k at the first iteration at or past cell env step "
        "k·budget/evaluations, the last at the end (0: none).",
        show_default=_shown_default("evaluations"),
    ),
    eval_episodes: Optional[int] = typer.Option(
        None,
        "--eval-episodes",
        help="Evaluation episodes per split and learner at each evaluation.",
        show_default="ceil(100 / learners): 100 per split and cell",
    ),
    set_: list[str] = typer.Option([], "--set", help="PLUGIN.KEY=VALUE, e.g. diff-a2c.lr=0.001; repeatable."),
    straggler: Optional[str] = typer.Option(
        None,
        "--straggler",
        help="RANK:FACTOR: learner RANK of every cell runs FACTOR times slower than it could, busy-waiting "
        "after each iteration (straggler studies; part of the cell's config). E.g. 0:3.",
    ),
    grid: Optional[Path] = typer.Option(None, "--grid", help="A TOML grid file (options given here override it)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default: results/grid-<id>)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the cells, with their non-default parameters, and run nothing."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="With --dry-run: print every cell's full resolved config as JSON instead of a table."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (CUDA round-robin when present)."),
    comm_timeout: float = typer.Option(120.0, "--comm-timeout", help="Seconds before a stuck exchange fails its cell."),
    transport: str = typer.Option(
        "auto",
        "--transport",
        help="Parameter exchange between processes (of one learner, or of a block with --learners-per-process): "
        "shm (shared memory, one host), p2p (gloo messages), or auto (NCCL between GPUs, else shm when possible).",
    ),
    jobs: Optional[int] = typer.Option(
        None,
        "--jobs",
        "-j",
        help="Run up to K cells at once, each on cores (and GPUs) of its own: a cell starts only when enough are free.",
        show_default="as many as the cores, the grid's cells and the memory allow",
    ),
    cell: list[str] = typer.Option(
        [],
        "--cell",
        help="Run only this cell (id) of the grid already in --out (no axes needed); repeatable.",
    ),
    launcher: str = typer.Option(
        "local",
        "--launcher",
        help="local (this machine runs the learners), torchrun (prepare --out and print a torchrun command per "
        "cell) or slurm (prepare --out and submit a Slurm job array, a task per cell left to run, through submitit).",
    ),
    slurm: list[str] = typer.Option(
        [],
        "--slurm",
        help="With --launcher slurm: KEY=VALUE, repeatable. Keys: partition, time (MINUTES or H:MM:SS; default 60), "
        "account, qos, nodes (per cell; >1 runs torchrun across them), gpus_per_node, cpus_per_task, mem_gb, "
        "array_parallelism, extra=NAME=VALUE (any sbatch option), cluster=local (tasks as local processes: testing).",
    ),
    wait: bool = typer.Option(
        False,
        "--wait",
        help="With --launcher slurm: wait for the jobs, then print the summary and leaderboard "
        "(Ctrl-C stops waiting, not the jobs).",
    ),
    execute: bool = typer.Option(
        False,
        "--execute",
        help="With --launcher torchrun: run the commands here, one after another (with --nnodes > 1, on every node).",
    ),
    nnodes: int = typer.Option(1, "--nnodes", help="With --launcher torchrun: machines sharing each cell's learners."),
    rdzv_endpoint: Optional[str] = typer.Option(
        None,
        "--rdzv-endpoint",
        help="With --launcher torchrun and --nnodes > 1: HOST:PORT of the node hosting the rendezvous.",
    ),
    rdzv_timeout: int = typer.Option(
        120,
        "--rdzv-timeout",
        help="With --launcher torchrun: seconds to wait for the other nodes (and the rendezvous host).",
    ),
    checkpoint_every: Optional[int] = typer.Option(
        None,
        "--checkpoint-every",
        help="Cell env steps between checkpoints (0: only the final one).",
        show_default="every 10% of the budget",
    ),
    checkpoint_replay: bool = typer.Option(
        False,
        "--checkpoint-replay",
        help="Off-policy algorithms: checkpoints also hold the replay buffers' contents (each as large as the "
        "'replay memory' printed before the run), so a resumed learner does not start with empty buffers.",
    ),
    logger: list[str] = typer.Option(
        [],
        "--logger",
        help="Watch cells while they run: each learner gives this logger its metric rows, at most every "
        "every_s seconds. NAME[:key=value,…]: jsonl or csv (OUT/live/), tensorboard, wandb (`bench plugins` lists "
        "them and their parameters); repeatable. Not part of any cell.",
    ),
    init_from: Optional[str] = typer.Option(
        None,
        "--init-from",
        help="Start every cell's learners from these checkpoints: a cell's checkpoint folder (learner r from its "
        "learner r mod N), one learner's folder or a step-….pt file. Recorded in each cell's config.",
    ),
    learners_per_process: Optional[int] = typer.Option(
        None,
        "--learners-per-process",
        help="K learners per process: 1 runs one process per learner; K > 1 blocks of K learners that act and "
        "update with batched math (K must divide the cell's learners; N: one block). Not part of any cell.",
        show_default="a block where the cell allows one, else 1 (docs/scaling.md)",
    ),
) -> None:
    """Run a grid of cells. With no axes, runs the small embedded default grid."""
    _check_run_options(transport, device, jobs, checkpoint_every, launcher, nnodes)
    _check_learners_per_process(learners_per_process, launcher)
    _check_launch_options(comm_timeout, launcher, nnodes, rdzv_endpoint, rdzv_timeout, execute)
    slurm_options = _slurm_options(launcher, slurm, wait, jobs, dry_run)
    if as_json and not dry_run:
        raise UserError("--json applies only with --dry-run (it prints the cells' configs instead of running them)")
    if out is not None:
        _check_out(out)
    axes_given = any([algorithm, topology, env, replay, grid])
    if cell:
        _start_learners_forkserver(dry_run, launcher)
        loggers = _chosen_loggers(None, logger)
        registry = _registry()
        from benchbase.run.environment import under_torchrun

        settings = _execution_settings(
            registry,
            device,
            comm_timeout,
            transport,
            checkpoint_every,
            checkpoint_replay,
            loggers,
            learners_per_process,
        )
        listing = (dry_run, as_json)
        if slurm_options is not None and not dry_run:
            return _submit_cells_of_folder(cell, out, axes_given, registry, settings, slurm_options, wait)
        return _run_cells_of_folder(cell, out, axes_given, registry, under_torchrun(), settings, jobs, listing)
    # The spec (and its size) is checked before the plugins load: they import torch, which takes seconds.
    spec = _grid_spec(
        grid,
        axes_given,
        algorithm,
        topology,
        env,
        replay,
        set_,
        {
            "seeds": seeds,
            "learners": learners,
            "envs_per_learner": envs_per_learner,
            "env_steps": env_steps,
            "evaluations": evaluations,
            "eval_episodes": eval_episodes,
            "straggler": straggler,
        },
    )
    _start_learners_forkserver(dry_run, launcher)
    loggers = _chosen_loggers(grid, logger)
    registry = _registry()
    from benchbase.run.environment import under_torchrun

    settings = _execution_settings(
        registry, device, comm_timeout, transport, checkpoint_every, checkpoint_replay, loggers, learners_per_process
    )
    worker = under_torchrun()
    console = _console(stderr=as_json)  # with --json, stdout holds only the JSON
    cells = _valid_cells(spec, registry, console, init_from)
    if not worker:
        from benchbase.run.blocks import check_process_layout

        check_process_layout(cells, registry, settings)
    if out is None:
        out = _default_out(cells)
        _check_out(out)
    _print_replay_memory(console, cells, registry)
    if not worker and (launcher == "local" or execute):  # the learners run on this machine
        from benchbase.grid.expand import check_memory
        from benchbase.run.blocks import check_gpu_memory, runs_in_blocks
        from benchbase.run.schedule import cells_at_once

        in_blocks = runs_in_blocks(registry, settings)
        if launcher == "local" and jobs is None:
            jobs = cells_at_once(cells, registry, in_blocks)
        check_memory(cells, registry, jobs if launcher == "local" else 1, in_blocks=in_blocks)
        check_gpu_memory(cells, registry, settings)
    if dry_run:
        _print_cells(console, cells, out, registry, as_json)
        return
    if worker:
        from benchbase.run.torchrun import run_as_worker

        raise typer.Exit(run_as_worker(spec, cells, out, registry, console, settings))
    if slurm_options is not None:
        from benchbase.run.slurm import submit_grid

        console.print(f"benchbase: {len(cells)} cells → {out}")
        raise typer.Exit(submit_grid(spec, cells, out, registry, console, settings, slurm_options, wait=wait))
    if launcher == "torchrun":
        raise typer.Exit(
            _torchrun_commands(
                spec, cells, out, registry, console, nnodes, rdzv_endpoint, rdzv_timeout, execute, settings
            )
        )
    raise typer.Exit(_run_here(spec, cells, out, registry, console, settings, jobs or 1))


def _check_run_options(
    transport: str, device: str, jobs: Optional[int], checkpoint_every: Optional[int], launcher: str, nnodes: int
) -> None:
    """Options that are wrong whatever the grid: one message each, before anything loads."""
    if transport not in ("auto", "shm", "p2p"):
        raise UserError(f"--transport {transport!r}: choose auto, shm or p2p")
    if device not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device {device!r}: choose cpu, cuda or auto")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: give the number of cells to run at once, at least 1")
    if checkpoint_every is not None and checkpoint_every < 0:
        raise UserError(
            f"--checkpoint-every {checkpoint_every}: give a number of env steps ≥ 0 (0: only the final checkpoint)"
        )
    if launcher not in ("local", "torchrun", "slurm"):
        raise UserError(f"--launcher {launcher!r}: choose local, torchrun or slurm")
    if device == "cuda" and launcher != "slurm":  # a Slurm job's node checks its own GPUs
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here (use cpu or auto)")
    if nnodes < 1:
        raise UserError(f"--nnodes {nnodes}: give at least 1")


def _check_learners_per_process(learners_per_process: Optional[int], launcher: str) -> None:
    if learners_per_process is None:
        return
    if learners_per_process < 1:
        raise UserError(f"--learners-per-process {learners_per_process}: give at least 1 (1: one learner per process)")
    if learners_per_process > 1 and launcher == "torchrun":
        raise UserError(
            f"--learners-per-process {learners_per_process}: torchrun starts one process per learner; "
            "blocks run with --launcher local or slurm"
        )


def _check_launch_options(
    comm_timeout: float, launcher: str, nnodes: int, rdzv_endpoint: Optional[str], rdzv_timeout: int, execute: bool
) -> None:
    """Launch options that are wrong, or would be silently ignored, whatever the grid."""
    import math

    if not math.isfinite(comm_timeout) or comm_timeout <= 0:
        raise UserError(f"--comm-timeout {comm_timeout:g}: give a number of seconds > 0")
    if rdzv_timeout < 1:
        raise UserError(f"--rdzv-timeout {rdzv_timeout}: give a number of seconds ≥ 1")
    if launcher != "torchrun":
        for given, option in ((nnodes > 1, "--nnodes"), (rdzv_endpoint is not None, "--rdzv-endpoint")):
            if given:
                raise UserError(f"{option} applies only with --launcher torchrun (this run's launcher is {launcher})")
        if execute:
            raise UserError(f"--execute applies only with --launcher torchrun (this run's launcher is {launcher})")
    if nnodes > 1 and rdzv_endpoint is None:
        raise UserError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (the node that hosts the rendezvous)")
    if rdzv_endpoint is not None:
        if nnodes == 1:
            raise UserError("--rdzv-endpoint applies only with --nnodes > 1 (one node uses torchrun --standalone)")
        host, colon, port = rdzv_endpoint.rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UserError(f"--rdzv-endpoint {rdzv_endpoint!r}: expected HOST:PORT with a port from 1 to 65535")


def _slurm_options(launcher: str, items: list[str], wait: bool, jobs: Optional[int], dry_run: bool = False):
    """--slurm's options (None unless --launcher slurm), checked before anything loads; submitit must be there."""
    if launcher != "slurm":
        for given, option in ((items, "--slurm"), (wait, "--wait")):
            if given:
                raise UserError(f"{option} applies only with --launcher slurm (this run's launcher is {launcher})")
        return None
    from benchbase.run.slurm import check_cluster, parse_slurm_options, require_submitit

    options = parse_slurm_options(items)
    if jobs not in (None, 1):
        raise UserError(
            f"--jobs {jobs}: with --launcher slurm every cell is a job of its own "
            "(--slurm array_parallelism=K limits how many run at once)"
        )
    if not dry_run:  # listing the cells needs neither submitit nor a cluster
        require_submitit()
        check_cluster(options)
    return options


def _check_out(out: Path) -> None:
    """--out must be a folder, or a path where one can be made, on a writable file system."""
    import os

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder (a new one, or a run folder to continue)")
    existing = out
    while not existing.exists():
        if existing.is_symlink():
            raise UserError(f"--out {out}: {existing} is a broken link: give another folder")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, so no folder can be made under it: give another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {existing} is not writable (read-only, or no permission): give another folder")


def _chosen_loggers(grid: Optional[Path], given: list[str]) -> list:
    """The run's loggers: --logger entries, else the --grid file's `loggers` (checked by name later)."""
    from benchbase.grid import spec as grid_module

    file_values = grid_module.load_grid_file(grid) if grid is not None and not given else {}
    return grid_module.chosen_loggers(file_values, given)


def _execution_settings(
    registry,
    device: str,
    comm_timeout: float,
    transport: str,
    checkpoint_every: Optional[int],
    checkpoint_replay: bool,
    loggers: Optional[list] = None,
    learners_per_process: Optional[int] = None,
):
    """How the cells run (the same for the grid, torchrun and --cell paths); never part of a cell's identity.
    Each logger is looked up, its parameters checked and its package found here, before anything runs."""
    from benchbase.learner.live import resolve_logger
    from benchbase.learner.settings import ExecutionSettings

    for entry in loggers or []:
        resolve_logger(registry, entry.name, entry.overrides)
    return ExecutionSettings(
        loggers=tuple((entry.name, tuple(entry.overrides)) for entry in loggers or []),
        device=device,
        comm_timeout_s=comm_timeout,
        transport=transport,
        plugins_only=_selection["only"],
        plugins_blocked=_selection["blocked"] or (),
        plugins_extra=registry.extra,
        checkpoint_every=checkpoint_every,
        checkpoint_replay=checkpoint_replay,
        learners_per_process=learners_per_process,
    )


def _grid_spec(
    grid: Optional[Path],
    axes_given: bool,
    algorithm: list[str],
    topology: list[str],
    env: list[str],
    replay: list[str],
    set_: list[str],
    shared: dict,
):
    """The grid spec: the --grid file (or the default grid when no axis is given), overridden by the options."""
    from benchbase.grid import spec as grid_module

    file_values = grid_module.load_grid_file(grid) if grid else ({} if axes_given else grid_module.default_grid())
    cli_values = {
        "algorithms": [grid_module.parse_axis_entry(a, "--algorithm") for a in algorithm],
        "topologies": [grid_module.parse_axis_entry(t, "--topology") for t in topology],
        "envs": [grid_module.parse_axis_entry(e, "--env") for e in env],
        "replay": [grid_module.parse_replay_entry(r, "--replay") for r in replay],
        **shared,
        "set_items": [grid_module.parse_set(item) for item in set_],
    }
    return grid_module.make_spec(file_values, cli_values)


def _valid_cells(spec, registry, console: Console, init_from: Optional[str]) -> list:
    """The grid's valid cells (the invalid ones printed with their reason), started from --init-from if given."""
    import dataclasses

    from benchbase.grid import expand as grid_expand

    plan = grid_expand.expand(spec, registry)
    for combination, reason in plan.invalid:
        console.print(f"[yellow]skipped[/yellow] {combination}: {reason}")
    if not plan.cells:
        raise UserError("no valid cell in this grid (see the reasons above)")
    if init_from is None:
        return plan.cells
    from benchbase.checkpoints.sources import init_source
    from benchbase.learner.build import check_fits

    source = init_source(init_from)
    check_fits(plan.cells, source, registry)
    console.print(
        f"every cell starts from {source['cell_id']}'s checkpoints "
        f"({source['algorithm']} on {source['env']}, {source['env_steps']:,} env steps)"
    )
    return [dataclasses.replace(cell, init_from=source) for cell in plan.cells]


def _default_out(cells: list) -> Path:
    """results/grid-<id>: the same grid always goes to the same folder (and resumes there)."""
    import hashlib

    from benchbase.grid.cell import grid_fingerprint

    fingerprint = hashlib.sha256(",".join(grid_fingerprint(cells)).encode()).hexdigest()
    return Path("results") / ("grid-" + fingerprint[:8])


def _print_replay_memory(console: Console, cells: list, registry) -> None:
    from benchbase.grid.expand import replay_memory

    for label, size in replay_memory(cells, registry):
        console.print(f"replay memory: up to {size / 2**20:,.1f} MiB per learner when full ({label})")


def _run_here(spec, cells: list, out: Path, registry, console: Console, settings, jobs: int) -> int:
    """The grid on this machine's learner processes; the exit code."""
    from benchbase.run.runner import run_grid

    console.print(f"benchbase: {len(cells)} cells → {out}")
    code = run_grid(spec, cells, out, registry, console=console, settings=settings, jobs=jobs)
    console.print(f"results: {out}")
    return code


@app.command(cls=_Command)
def report(
    paths: list[str] = typer.Argument(
        ..., metavar="PATH", help="Run folders, or globs of them (quote them: 'results/*')."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Report folder (default: <run folder>/report for one run, ./report for several)."
    ),
    metric: str = typer.Option(
        "final", "--metric", help="final (final evaluation) or auc (area under the learning curve)."
    ),
    split: str = typer.Option(
        "train", "--split", help="Evaluation split to rank on: train (own tasks) or a family split (D, R, E…)."
    ),
    group_by: Optional[str] = typer.Option(
        None,
        "--group-by",
        help="What tells entries apart (comma-separated): algorithm,variant,topology,replay (default: all four).",
    ),
    baseline: Optional[str] = typer.Option(
        None,
        "--baseline",
        help="Entry to compare against: its label, with any separators (diff-a2c · ring · none, "
        "'diff-a2c - ring - none', 'diff-a2c ring none'), or words naming one entry (isolated).",
    ),
    repetitions: int = typer.Option(2000, "--repetitions", help="Bootstrap repetitions behind every interval."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    no_html: bool = typer.Option(False, "--no-html", help="Skip report.html."),
    export: list[str] = typer.Option(
        [],
        "--export",
        help="Also write the per-run scores for rliable (.npz score matrices) or marl-eval (JSON), "
        "into <report>/rliable and <report>/marl-eval; repeatable or comma-separated.",
    ),
) -> None:
    """Leaderboard of one or many run folders: console, Markdown, HTML, leaderboard.parquet and curves.parquet."""
    from benchbase.report.build import (
        GROUP_FIELDS,
        build_report,
        env_registry,
        load_runs,
        write_report,
    )
    from benchbase.report.export import check_export_formats, export_report
    from benchbase.report.text import leaderboard_table

    formats = check_export_formats(export)
    fields = _split(group_by) if group_by is not None else GROUP_FIELDS
    if not fields:
        raise UserError(f"--group-by is empty: name some of {', '.join(GROUP_FIELDS)}")
    only = _selection["only"]
    registry = env_registry(only=only, blocked=_selection["blocked"] or ())
    runs = load_runs(paths)
    result = build_report(
        runs,
        metric=metric,
        split=split,
        group_by=fields,
        baseline=baseline,
        repetitions=repetitions,
        confidence=confidence,
        seed=seed,
        registry=registry,
    )
    if out is None:
        out = Path(runs.sources[0]) / "report" if len(runs.sources) == 1 else Path("report")
    written = write_report(result, out, html=not no_html)
    exported = export_report(runs, out, formats, group_by=fields, registry=registry) if formats else []
    console = _console()
    console.print(leaderboard_table(result, width=console.width))  # an 80-column terminal gets fewer columns
    for problem in result.problems:
        console.print(Text("problem: ", style="yellow") + Text(problem), highlight=False)
    console.print("report: " + ", ".join(str(path) for path in written), highlight=False)
    if exported:
        folders = dict.fromkeys(str(path.parent) for path in exported)
        console.print(f"exports: {', '.join(folders)} ({len(exported)} files)", highlight=False)


@app.command("eval", cls=_Command)
def eval_(
    path: str = typer.Argument(
        ...,
        metavar="PATH",
        help="A run folder (every cell with checkpoints), a cell's checkpoint folder (checkpoints/<cell>), "
        "a learner's folder (…/learner-<r>) or a step-….pt file; each learner's newest good checkpoint is used.",
    ),
    env: Optional[str] = typer.Option(
        None,
        "--env",
        "-e",
        help="Evaluate on this env family, FAMILY[:key=value,…] (default: each cell's own family and parameters); "
        "its observation and action spaces must be the model's.",
    ),
    split: list[str] = typer.Option(
        [],
        "--split",
        "-s",
        help="train (each learner's own training tasks) or a split of the family (D, R, E…); "
        "repeatable (default: train and every split of the family).",
    ),
    episodes: Optional[int] = typer.Option(
        None,
        "--episodes",
        "-n",
        help="Episodes per split and learner (default: as many as the run's own evaluations, so a final "
        "checkpoint reproduces its final evaluation).",
    ),
    stochastic: bool = typer.Option(
        False, "--stochastic", help="Sample actions from the policy instead of acting greedily."
    ),
    learner: Optional[int] = typer.Option(None, "--learner", help="Evaluate only learner R of each cell."),
    seed: Optional[int] = typer.Option(
        None,
        "--seed",
        help="Seed of the evaluation envs and held-out tasks (default: the run's own evaluation seeds, "
        "so a final checkpoint reproduces the run's final evaluation).",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Results folder (default: <run folder>/evals/<time> inside a run folder, else ./eval-<time>).",
    ),
    video_path: Optional[Path] = typer.Option(
        None,
        "--video",
        help="Record a .mp4 or .gif (30 fps) of the first cell's first evaluated learner: the first "
        "episode of every split (simulator 0's), captioned with cell, learner, split and task. The env must render: "
        "classic control, and Gymnasium ids of MuJoCo and ALE envs.",
    ),
) -> None:
    """Evaluate saved models: N episodes per split and learner, written to Parquet and summarised."""
    from benchbase.evaluate.video import check_video_path

    # Mistakes that need no model are caught before torch is imported.
    if not Path(path).exists():
        raise UserError(f"{path}: no such file or folder")
    if episodes is not None and episodes < 1:
        raise UserError(f"--episodes {episodes}: give at least 1")
    if learner is not None and learner < 0:
        raise UserError(f"--learner {learner}: give a learner number ≥ 0")
    if video_path is not None:
        check_video_path(video_path)
    import torch

    from benchbase.evaluate.evaluate import EvalRequest, evaluate
    from benchbase.evaluate.summary import summary_table

    torch.set_num_threads(1)  # small models: one thread is fastest and leaves the cores to others
    request = EvalRequest(
        source=path,
        env=env,
        splits=tuple(split),
        episodes=episodes,
        stochastic=stochastic,
        learner=learner,
        seed=seed,
        out=out,
        video=video_path,
    )
    console = _console()
    outcome = evaluate(request, _registry(), progress=lambda text: console.print(f"[dim]evaluating {text}[/dim]"))
    for note in outcome.notes:
        console.print(Text("skipped: ", style="yellow") + Text(note), highlight=False)
    console.print(summary_table(outcome.summary, "stochastic" if stochastic else "greedy"))
    if outcome.video is not None:
        console.print(f"video: {outcome.video} ({outcome.video_frames:,} frames)", highlight=False)
    console.print(f"results: {outcome.out / 'evaluations.parquet'}", highlight=False)


def _run_cells_of_folder(
    cell_ids: list[str],
    out: Optional[Path],
    axes_given: bool,
    registry,
    worker: bool,
    settings,
    jobs: Optional[int],
    listing: tuple[bool, bool] = (False, False),
) -> None:
    """`bench run --out OUT --cell ID…`: cells of the grid already in OUT, locally or as torchrun workers;
    `listing` = (--dry-run, --json): only print them."""
    from benchbase.run.runner import run_grid

    cells = _cells_of_folder(cell_ids, out, axes_given)
    only = set(cell_ids)
    chosen = [cell for cell in cells if cell.cell_id in only]
    dry_run, as_json = listing
    console = _console(stderr=as_json)
    if dry_run:
        return _print_cells(console, chosen, out, registry, as_json)
    if not worker:
        from benchbase.run.blocks import check_gpu_memory, check_process_layout

        check_process_layout(chosen, registry, settings)
        check_gpu_memory(chosen, registry, settings)
    if worker:
        from benchbase.run.torchrun import run_as_worker

        raise typer.Exit(run_as_worker(None, chosen, out, registry, console, settings))
    if jobs is None:
        from benchbase.run.blocks import runs_in_blocks
        from benchbase.run.schedule import cells_at_once

        jobs = cells_at_once(chosen, registry, runs_in_blocks(registry, settings))
    code = run_grid(None, cells, out, registry, console=console, settings=settings, jobs=jobs, only=only)
    console.print(f"results: {out}")
    raise typer.Exit(code)


def _cells_of_folder(cell_ids: list[str], out: Optional[Path], axes_given: bool) -> list:
    """Every cell of the grid already in --out, once each of `cell_ids` is found among them."""
    from benchbase.errors import unknown_name
    from benchbase.run.records import cells_of_run

    if axes_given:
        raise UserError("--cell runs cells of the grid already in --out: give no axes or --grid with it")
    if out is None:
        raise UserError("--cell needs --out: the run folder that holds the grid")
    cells = cells_of_run(out)
    known = {cell.cell_id for cell in cells}
    for cell_id in cell_ids:
        if cell_id not in known:
            raise unknown_name(f"cell of {out}", cell_id, sorted(known))
    return cells


def _submit_cells_of_folder(
    cell_ids: list[str], out: Optional[Path], axes_given: bool, registry, settings, slurm_options, wait: bool
) -> None:
    """`bench run --out OUT --cell ID… --launcher slurm`: submit those cells of the grid already in OUT."""
    from benchbase.run.blocks import check_process_layout
    from benchbase.run.slurm import submit_grid

    cells = _cells_of_folder(cell_ids, out, axes_given)
    check_process_layout([cell for cell in cells if cell.cell_id in set(cell_ids)], registry, settings)
    console = _console()
    raise typer.Exit(
        submit_grid(None, cells, out, registry, console, settings, slurm_options, wait=wait, only=set(cell_ids))
    )


def _torchrun_commands(
    spec,
    cells: list,
    out: Path,
    registry,
    console: Console,
    nnodes: int,
    rdzv_endpoint: Optional[str],
    rdzv_timeout: int,
    execute: bool,
    settings,
) -> int:
    """`bench run --launcher torchrun`: prepare OUT and print (or run) one torchrun command per cell, each
    with the run's execution settings (device, transport, timeouts, checkpoints, loggers, plugins)."""
    from benchbase.run.records import prepare_run
    from benchbase.run.torchrun import Rendezvous, check_endpoint, commands, plugin_options, settings_options
    from benchbase.run.torchrun import execute as execute_commands

    rendezvous = Rendezvous(nnodes=nnodes, endpoint=rdzv_endpoint, join_timeout_s=rdzv_timeout)
    selection = plugin_options(settings)
    commands(cells, out, rendezvous, selection)  # refuses what the nodes cannot share before OUT is written
    if execute:
        check_endpoint(rendezvous)
    _, rows, _ = prepare_run(spec, cells, out, registry)
    pending = [cell for cell in cells if rows[cell.cell_id]["status"] != "completed"]
    found = [command + settings_options(settings) for command in commands(pending, out, rendezvous, selection)]
    if not execute:
        where = "on each of the nodes" if nnodes > 1 else "here or on a GPU node"
        console.print(
            f"{len(found)} cell(s) of {len(cells)} to run; run each command {where} "
            f"(results go to {out}; `bench report {out}` when they are done):",
            highlight=False,
        )
        for command in found:
            print(shlex.join(command))
        return 0
    return execute_commands(found, console)


def _print_cells(console: Console, cells: list, out: Path, registry, as_json: bool = False) -> None:
    """`bench run --dry-run`: the cells, told apart by their parameters that differ from the plugins'
    defaults (their variant); with --json, every cell's full resolved config."""
    from benchbase.grid.cell import variant

    variants = {cell.cell_id: variant(cell, registry) for cell in cells}
    if as_json:
        rows = [{"cell_id": c.cell_id, "variant": variants[c.cell_id], "config": c.config()} for c in cells]
        typer.echo(json.dumps(rows, indent=2, default=str))
        console.print(f"dry run: nothing runs and nothing is written (results would go to {out})")
        return
    console.print(f"dry run: nothing runs and nothing is written (results would go to {out})")
    table = Table(title=f"{len(cells)} cells")
    columns = ["cell", "algorithm", "topology", "env", "replay", "seed", "learners", "sims/learner", "env steps"]
    shown_variant = any(variants.values())  # a column of blanks would only take room
    for column in columns + (["non-default parameters"] if shown_variant else []):
        table.add_column(column, overflow="fold")
    for cell in cells:
        table.add_row(
            cell.cell_id,
            cell.algorithm,
            cell.topology,
            cell.env,
            cell.replay,
            str(cell.seed),
            str(cell.learner_processes),
            str(cell.envs_per_learner),
            f"{cell.env_steps:,}",
            *([variants[cell.cell_id] or "(defaults)"] if shown_variant else []),
        )
    console.print(table)
    if not shown_variant:
        console.print("every cell uses its plugins' default parameters (--json prints the full configs)")


@app.command("export", cls=_Command)
def export_(
    path: str = typer.Argument(
        ...,
        metavar="PATH",
        help="A run folder, a cell's checkpoint folder (checkpoints/<cell>), a learner's folder (…/learner-<r>) "
        "or a step-….pt file; the learner's newest good checkpoint is used.",
    ),
    cell: Optional[str] = typer.Option(None, "--cell", help="The cell's id (needed when PATH holds several)."),
    learner: int = typer.Option(0, "--learner", help="The learner whose policy to export."),
    format_: str = typer.Option(
        "torchscript",
        "--format",
        help="torchscript (torch.jit.load), onnx (onnxruntime; pip install 'benchbase[onnx]') or state-dict.",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="The file to write (default ./policy-<cell>-learner-<r>.pt, or .onnx)."
    ),
) -> None:
    """A learner's greedy policy as one file that runs without benchbase (observation normalisation included)."""
    # Mistakes that need no model are caught before torch is imported.
    if not Path(path).exists():
        raise UserError(f"{path}: no such file or folder")
    if learner < 0:
        raise UserError(f"--learner {learner}: give a learner number ≥ 0")
    import torch

    from benchbase.evaluate.policy import ExportRequest, check_format, export_policy, summary_line

    check_format(format_)
    torch.set_num_threads(1)  # small models: one thread is fastest and leaves the cores to others
    outcome = export_policy(ExportRequest(path, out, cell, learner, format_), _registry())
    _console().print(summary_line(outcome), highlight=False)


@app.command(cls=_Command)
def reproduce(
    claims: Optional[list[str]] = typer.Argument(
        None, metavar="CLAIM", help="Claims to reproduce (bench reproduce --list shows them), or all."
    ),
    scale: str = typer.Option(
        "quick",
        "--scale",
        help="smoke (seconds: tests the machinery), quick (2 cores, ≤ 15 min a claim) or paper (the paper's budget).",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Results folder (default: results/reproduce-<scale>); a rerun resumes."
    ),
    list_claims: bool = typer.Option(False, "--list", help="List the claims, their sources and scales, and exit."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (CUDA round-robin when present)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Run up to K cells at once, each on cores of its own."),
) -> None:
    """Run published claims and write ours and theirs side by side (comparison.parquet, reproduction.md).
    Exits 3 when a quantity that should agree at this scale does not."""
    from benchbase.reproduce import execute

    if list_claims:
        return _print_claims()
    out = out if out is not None else Path("results") / f"reproduce-{scale}"
    execute.check_request(list(claims or []), scale, out)
    _check_run_options("auto", device, jobs, None, "local", 1)
    registry = _registry()
    settings = _execution_settings(registry, device, 120.0, "auto", None, False)
    command = shlex.join(["bench", *sys.argv[1:]])  # as typed, for reproduction.md
    raise typer.Exit(
        execute.reproduce(list(claims or []), scale, out, registry, settings, _console(), jobs, command=command)
    )


def _print_claims() -> None:
    from benchbase.reproduce.catalogue import listing, load_claims

    table = Table(title="bench reproduce claims")
    for column in ("claim", "what", "scales", "quantities", "published figures", "note"):
        table.add_column(column, overflow="fold")
    for row in listing(load_claims()):
        table.add_row(row.name, row.title, row.scales, str(row.quantities), str(row.published), row.note)
    _console().print(table)


def main() -> None:
    # Click's own usage errors (a missing value, `--seeds abc`) become one line like ours, not a
    # framed box: found through BadParameter's bases, since typer may vendor its own click.
    usage_error = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "UsageError")
    try:
        code = app(standalone_mode=False, prog_name="bench")  # not `python -m benchbase`
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except usage_error as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            # The error holds the help text; typer's rich formatter has already printed it (and holds "").
            if error.format_message().strip():
                print(error.format_message())
        else:
            print(f"error: {' '.join(error.format_message().split())}", file=sys.stderr)
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
