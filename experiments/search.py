"""Search spaces and samplers for ``refinery tune``: which parameter settings each strategy entry tries.

A space maps a parameter to a list of choices or a range, as written in YAML::

    space:
      remasking: [low_confidence, random]          # choices
      eta: {low: 0.005, high: 0.05, log: true}     # float range (log-uniform), 4 significant digits
      window: {low: 8, high: 48, grid: 5}          # int range (both ends ints); grid: points for sampler grid

Both samplers give every entry exactly ``trials`` settings, the entry's start (its preset and params) first:

- ``random``: the other ``trials - 1`` are drawn independently per parameter from a ``random.Random``
  seeded by (seed, entry label), redrawn while a draw repeats an earlier trial or cannot run;
- ``grid``: the Cartesian product of the choices (ranges need ``grid: K``), minus the start when the grid
  holds it, must have exactly ``trials - 1`` points, or the protocol is refused.

Two settings are "the same trial" when the strategy resolves them to the same full config
(``canon``), so ``block_length: null`` written out equals leaving it at its default.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

SAMPLERS = ("grid", "random")
MAX_REDRAWS = 200  # random draws per wanted trial before the space is declared too small


class SpaceError(ValueError):
    """A space or sampler mistake: ``key`` is the dotted key under the entry, ``reason`` says why."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


@dataclass(frozen=True)
class Dim:
    """One searched parameter: ``choices`` or a ``low``..``high`` range (int when both ends are ints)."""

    name: str
    choices: Optional[tuple] = None
    low: Optional[float] = None
    high: Optional[float] = None
    integer: bool = False
    log: bool = False
    grid: Optional[int] = None  # points of the range under the grid sampler

    def draw(self, rng: random.Random) -> Any:
        if self.choices is not None:
            return rng.choice(self.choices)
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        if self.integer and not self.log:
            return rng.randint(int(self.low), int(self.high))
        v = rng.uniform(lo, hi)
        v = math.exp(v) if self.log else v
        return int(round(v)) if self.integer else float(f"{v:.4g}")  # 4 digits: settings a reader can copy

    def points(self) -> tuple:
        """The grid points of this dimension (ranges: ``grid`` evenly or log-evenly spaced values)."""
        if self.choices is not None:
            return self.choices
        if self.grid is None:
            raise SpaceError(self.name, "a range needs 'grid: K' (points) under the grid sampler")
        if self.grid == 1:
            return (self.low,)
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        vals = [lo + (hi - lo) * i / (self.grid - 1) for i in range(self.grid)]
        vals = [math.exp(v) for v in vals] if self.log else vals
        out = tuple(int(round(v)) if self.integer else float(f"{v:.4g}") for v in vals)
        if len(set(out)) != len(out):
            raise SpaceError(f"{self.name}.grid", f"{self.grid} points between {self.low} and {self.high} repeat "
                                                  f"after rounding: {list(out)}")
        return out

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        kind = "int" if self.integer else "float"
        return f"{kind} [{self.low}, {self.high}]" + (" log" if self.log else "") + \
            (f" grid {self.grid}" if self.grid else "")


def parse_space(raw: Any, where: str = "space") -> tuple[Dim, ...]:
    """YAML mapping -> dimensions, in the order written. Raises :class:`SpaceError` naming the key."""
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(where, f"expected a non-empty mapping of parameter -> choices or range, got {raw!r}")
    return tuple(_dim(str(name), spec, f"{where}.{name}") for name, spec in raw.items())


def _dim(name: str, spec: Any, key: str) -> Dim:
    if isinstance(spec, list):
        if not spec:
            raise SpaceError(key, "an empty list of choices")
        if len({json.dumps(c, sort_keys=True) for c in spec}) != len(spec):
            raise SpaceError(key, f"choices repeat: {spec}")
        return Dim(name, choices=tuple(spec))
    if not isinstance(spec, dict):
        raise SpaceError(key, f"expected a list of choices or a mapping {{low, high[, log, grid]}}, got {spec!r}")
    unknown = sorted(set(spec) - {"low", "high", "log", "grid"})
    if unknown:
        raise SpaceError(f"{key}.{unknown[0]}", "unknown key; known keys: ['grid', 'high', 'log', 'low']")
    for end in ("low", "high"):
        if end not in spec:
            raise SpaceError(f"{key}.{end}", "required key is missing")
        if isinstance(spec[end], bool) or not isinstance(spec[end], (int, float)):
            raise SpaceError(f"{key}.{end}", f"expected a number, got {spec[end]!r}")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{key}.log", f"expected true/false, got {log!r}")
    if not low < high:
        raise SpaceError(key, f"need low < high, got {low} and {high}")
    if log and low <= 0:
        raise SpaceError(f"{key}.low", f"a log range needs low > 0, got {low}")
    grid = spec.get("grid")
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 1):
        raise SpaceError(f"{key}.grid", f"expected an integer >= 1, got {grid!r}")
    integer = isinstance(low, int) and isinstance(high, int)
    return Dim(name, low=low, high=high, integer=integer, log=log, grid=grid)


def sample_trials(dims: Sequence[Dim], start: dict, trials: int, sampler: str, seed: int, label: str,
                  canon: Callable[[dict], str], where: str = "space") -> list[dict]:
    """``trials`` distinct settings, ``start`` first. ``canon(params)`` -> a key equal for equal settings;
    it raises ValueError for a setting that cannot run (random draws it again, grid refuses)."""
    if sampler not in SAMPLERS:
        raise SpaceError("sampler", f"{sampler!r} is not one of {list(SAMPLERS)}")
    try:
        seen = {canon(start)}
    except ValueError as e:
        raise SpaceError(where, f"the start setting {start} cannot run: {e}") from None
    out = [dict(start)]
    if sampler == "grid":
        return out + _grid(dims, start, trials, seen, canon, where)
    rng = random.Random(f"tune|{seed}|{label}")
    misses, why = 0, ""
    while len(out) < trials:
        params = {**start, **{d.name: d.draw(rng) for d in dims}}
        try:
            key = canon(params)
        except ValueError as e:
            key, why = None, f" (last refused draw: {e})"
        if key is None or key in seen:
            misses += 1
            if misses > MAX_REDRAWS * trials:
                raise SpaceError(where, f"found only {len(out)} distinct runnable settings in "
                                        f"{MAX_REDRAWS * trials} draws; trials: {trials} needs a larger space{why}")
            continue
        seen.add(key)
        out.append(params)
    return out


def _grid(dims: Sequence[Dim], start: dict, trials: int, seen: set, canon, where: str) -> list[dict]:
    points = []
    for values in itertools.product(*(d.points() for d in dims)):
        params = {**start, **dict(zip((d.name for d in dims), values))}
        try:
            key = canon(params)
        except ValueError as e:
            raise SpaceError(where, f"grid point {dict(zip((d.name for d in dims), values))} cannot run: {e}") \
                from None
        if key not in seen:
            seen.add(key)
            points.append(params)
    if len(points) != trials - 1:
        raise SpaceError(where, f"the grid has {len(points)} settings besides the start, but trials: {trials} "
                                f"needs exactly {trials - 1}; change the grid or the trial count")
    return points
