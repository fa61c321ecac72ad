"""The published claims `bench reproduce` knows: one TOML file per claim in `claims/` (package data).

A claim file holds:

- ``[claim]``: name, title, the sources of its published figures (``[[claim.source]]``: key,
  citation, url), the rule that decides ``agrees`` (``agrees``: its text, shown in the tables),
  notes, and ``implemented = false`` with ``not_implemented`` (why, and what to run instead) for
  a claim that is listed but cannot run;
- ``[scale.smoke]``, ``[scale.quick]``, ``[scale.paper]``: grid values every grid of the claim
  takes at that scale (seeds, learners, envs_per_learner, env_steps, evaluations, eval_episodes),
  per-grid values (``[scale.<scale>.grid.<grid>]``), grids not run at that scale (``skip_grids``)
  and the quantities that should agree there (``expect``);
- ``[grid.<name>]``: grids in the format `bench run --grid` takes (`benchbase.grid.spec`);
- ``[[quantity]]``: what is compared (see `Quantity`).

A grid's values at a scale are its own, then the scale's shared values, then the scale's values
for that grid: a paper budget that differs per grid lives in the grid table, and a smoke or quick
scale that sets ``env_steps`` overrides them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import tomllib

from benchbase.errors import UserError, unknown_name
from benchbase.grid.spec import GRID_KEYS

SCALES = ("smoke", "quick", "paper")
#: Quantity kinds: one measured value per run; Packer's D/R/E summary; P(X > Y) between two arms;
#: learners' env steps/s in one arm as a percentage of theirs in another (straggler studies).
KINDS = ("value", "packer", "improvement", "throughput")
MEASURES = ("return", "success")
RULES = ("overlap", "at-least", "at-most")
SUBJECTS = ("others", "straggler")
PACKER_SUMMARIES = ("default", "interpolation", "extrapolation")
_SCALE_KEYS = {"seeds", "learners", "envs_per_learner", "env_steps", "evaluations", "eval_episodes"}


@dataclass(frozen=True)
class Selection:
    """Cells of one grid of the claim, by the cells table's columns (empty: any)."""

    grid: str
    algorithm: str = ""
    topology: str = ""
    env: str = ""

    def matches(self, cell: dict[str, Any]) -> bool:
        return all(not wanted or cell.get(column) == wanted for column, wanted in self._columns())

    def _columns(self) -> tuple[tuple[str, str], ...]:
        return (("algorithm", self.algorithm), ("topology", self.topology), ("env", self.env))

    def __str__(self) -> str:
        picked = [wanted for _, wanted in self._columns() if wanted]
        return self.grid + (f" ({', '.join(picked)})" if picked else "")


@dataclass(frozen=True)
class Quantity:
    """One published figure and how ours is measured.

    kind ``value``: the mean over runs (seeds) of each run's final greedy evaluation (`measure`:
    mean return, or success rate in percent, on `split`) in the cells of `cells`. Kind ``packer``: Packer et
    al.'s summary (`summary`) in percent, over the env bases `bases`: Default = success of agents
    trained on D tested on D, Interpolation = R on R, Extrapolation = the geometric mean of D on R,
    D on E and R on E; per run the mean over the bases. Kind ``improvement``: P(X > Y) that a run
    of `cells` beats a run of `versus` on `split` (the report's Mann–Whitney statistic). Kind
    ``throughput``: per run (seed), the env steps/s of the `subject` learners of a `cells` cell (run
    with a straggler: "others" are the learners that are not it, "straggler" is it) as a percentage
    of the same learners' in the `versus` cell of that seed, averaged over those learners.

    The published band is `published` ± `published_std` (or ± `tolerance` where the source gives
    no spread); it is None where no published figure is available to compare with.
    """

    name: str
    label: str
    kind: str
    cells: Selection
    measure: str = "return"
    split: str = "train"
    source: str = ""
    published: float | None = None
    published_std: float | None = None
    tolerance: float | None = None
    published_budget: int | None = None  # env steps the published figure was trained for
    rule: str = "overlap"
    note: str = ""
    summary: str = ""
    bases: tuple[str, ...] = ()
    versus: Selection | None = None
    subject: str = "others"

    @property
    def band(self) -> tuple[float, float] | None:
        if self.published is None:
            return None
        spread = self.published_std if self.published_std is not None else (self.tolerance or 0.0)
        return self.published - spread, self.published + spread

    @property
    def grids(self) -> set[str]:
        return {self.cells.grid} | ({self.versus.grid} if self.versus else set())


@dataclass(frozen=True)
class Scale:
    values: dict[str, Any]
    per_grid: dict[str, dict[str, Any]]
    skip_grids: tuple[str, ...]
    expect: tuple[str, ...]  # quantity names that should agree at this scale


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    agrees: str
    sources: dict[str, dict[str, str]]  # key -> {"cite": …, "url": …}
    notes: tuple[str, ...]
    scales: dict[str, Scale]
    grids: dict[str, dict[str, Any]]
    quantities: tuple[Quantity, ...]
    implemented: bool = True
    not_implemented: str = ""
    file: str = ""

    def grid_values(self, grid: str, scale: str) -> dict[str, Any]:
        """The grid's values at `scale`: its own, then the scale's, then the scale's for this grid."""
        at = self.scales[scale]
        return {**self.grids[grid], **at.values, **at.per_grid.get(grid, {})}

    def grids_at(self, scale: str) -> list[str]:
        return [name for name in self.grids if name not in self.scales[scale].skip_grids]

    def quantities_at(self, scale: str) -> list[Quantity]:
        """The quantities whose grids all run at `scale`."""
        running = set(self.grids_at(scale))
        return [quantity for quantity in self.quantities if quantity.grids <= running]


# -- loading ----------------------------------------------------------------------------------


def claim_files() -> dict[str, Any]:
    """Claim name (its file's stem) -> the packaged file."""
    folder = resources.files("benchbase.reproduce").joinpath("claims")
    return {entry.name[: -len(".toml")]: entry for entry in folder.iterdir() if entry.name.endswith(".toml")}


def load_claims() -> dict[str, Claim]:
    """Every packaged claim, by name, in the order of the files' names."""
    files = claim_files()
    return {name: parse_claim(name, tomllib.loads(files[name].read_text()), files[name].name) for name in sorted(files)}


def select_claims(names: list[str], claims: dict[str, Claim]) -> list[Claim]:
    """The claims named (``all``: every implemented one); an unknown name is a UserError with a close match."""
    if names == ["all"]:
        return [claim for claim in claims.values() if claim.implemented]
    chosen = []
    for name in names:
        if name not in claims:
            raise unknown_name("claim", name, [*claims, "all"])
        claim = claims[name]
        if not claim.implemented:
            raise UserError(f"claim {name} is listed but not implemented: {claim.not_implemented}")
        if claim not in chosen:
            chosen.append(claim)
    return chosen


def _fail(file: str, text: str) -> UserError:
    return UserError(f"claim file {file}: {text}")


def _selection(data: Any, file: str, where: str, grids: dict[str, Any]) -> Selection:
    if not isinstance(data, dict) or data.get("grid") not in grids:
        raise _fail(file, f"{where}: expected {{ grid = one of {', '.join(grids)}, algorithm/topology/env = … }}")
    unknown = set(data) - {"grid", "algorithm", "topology", "env"}
    if unknown:
        raise _fail(file, f"{where}: unknown keys {sorted(unknown)}")
    return Selection(**{key: str(value) for key, value in data.items()})


def _quantity(data: dict[str, Any], file: str, grids: dict[str, Any], sources: dict[str, Any]) -> Quantity:
    name = data.get("name", "?")
    where = f"quantity {name}"
    values = dict(data)
    values["cells"] = _selection(values.get("cells"), file, where + " cells", grids)
    if "versus" in values:
        values["versus"] = _selection(values["versus"], file, where + " versus", grids)
    values["bases"] = tuple(values.get("bases", ()))
    try:
        quantity = Quantity(**values)
    except TypeError as error:
        raise _fail(file, f"{where}: {error}") from None
    checks = (
        (quantity.kind in KINDS, f"kind {quantity.kind!r} (choose {', '.join(KINDS)})"),
        (quantity.measure in MEASURES, f"measure {quantity.measure!r} (choose {', '.join(MEASURES)})"),
        (quantity.rule in RULES, f"rule {quantity.rule!r} (choose {', '.join(RULES)})"),
        (not quantity.source or quantity.source in sources, f"source {quantity.source!r} is not a [[claim.source]]"),
        (quantity.kind != "packer" or quantity.summary in PACKER_SUMMARIES, f"summary {quantity.summary!r}"),
        (quantity.kind != "packer" or bool(quantity.bases), "a packer quantity names its bases"),
        (
            (quantity.kind in ("improvement", "throughput")) == (quantity.versus is not None),
            "versus goes with kinds improvement and throughput",
        ),
        (quantity.subject in SUBJECTS, f"subject {quantity.subject!r} (choose {', '.join(SUBJECTS)})"),
        (quantity.published is None or math.isfinite(quantity.published), "published is not a number"),
    )
    for good, text in checks:
        if not good:
            raise _fail(file, f"{where}: {text}")
    return quantity


def _scale(data: dict[str, Any], file: str, scale: str, grids: dict[str, Any], names: set[str]) -> Scale:
    values = {key: value for key, value in data.items() if key in _SCALE_KEYS}
    unknown = set(data) - _SCALE_KEYS - {"grid", "skip_grids", "expect"}
    per_grid = data.get("grid", {})
    bad_grids = (set(per_grid) | set(data.get("skip_grids", []))) - set(grids)
    bad_names = set(data.get("expect", [])) - names
    if unknown or bad_grids or bad_names:
        raise _fail(file, f"scale.{scale}: unknown {sorted(unknown | bad_grids | bad_names)}")
    return Scale(values, per_grid, tuple(data.get("skip_grids", [])), tuple(data.get("expect", [])))


def parse_claim(name: str, data: dict[str, Any], file: str) -> Claim:
    """A claim from its file's TOML; a malformed file is a UserError naming the file."""
    head = data.get("claim", {})
    grids = data.get("grid", {})
    for grid, values in grids.items():
        unknown = set(values) - set(GRID_KEYS)
        if unknown:
            raise _fail(file, f"grid.{grid}: unknown keys {sorted(unknown)} (a grid takes {', '.join(GRID_KEYS)})")
    sources = {
        source["key"]: {"cite": source.get("cite", ""), "url": source.get("url", "")}
        for source in head.get("source", [])
    }
    quantities = tuple(_quantity(item, file, grids, sources) for item in data.get("quantity", []))
    names = {quantity.name for quantity in quantities}
    implemented = head.get("implemented", True)
    missing = [scale for scale in SCALES if scale not in data.get("scale", {})]
    if head.get("name") != name or (implemented and (missing or not grids or not quantities)):
        raise _fail(
            file, "expected [claim] name = the file's name, and [scale.*] (smoke, quick, paper), grids and quantities"
        )
    scales = {scale: _scale(values, file, scale, grids, names) for scale, values in data.get("scale", {}).items()}
    return Claim(
        name=name,
        title=head.get("title", name),
        agrees=head.get("agrees", ""),
        sources=sources,
        notes=tuple(head.get("notes", [])),
        scales=scales,
        grids=grids,
        quantities=quantities,
        implemented=implemented,
        not_implemented=head.get("not_implemented", ""),
        file=file,
    )


# -- grid files -------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(key)} = {_toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else _toml_value(key)


def grid_toml(values: dict[str, Any], header: str) -> str:
    """A grid's values as a `bench run --grid` file (its `set` tables last, as TOML needs)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if key != "set"]
    for plugin, table in (values.get("set") or {}).items():
        lines += ["", f"[set.{_toml_key(plugin)}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Listing:
    """One line of `bench reproduce --list`."""

    name: str
    title: str
    scales: str
    quantities: int
    published: int
    note: str = field(default="")


def listing(claims: dict[str, Claim]) -> list[Listing]:
    rows = []
    for claim in claims.values():
        published = sum(quantity.published is not None for quantity in claim.quantities)
        scales = ", ".join(SCALES) if claim.implemented else "none (not implemented)"
        rows.append(Listing(claim.name, claim.title, scales, len(claim.quantities), published, claim.not_implemented))
    return rows
