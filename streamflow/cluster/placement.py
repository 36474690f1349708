"""Where a source goes: the live actor with the least measured load.

An actor's load is the sum of its sources' delivered frame rates (reported by the actors). A source
not measured yet (just placed) counts as the mean rate of the measured ones, or 1 when nothing is
measured, so a burst of placements spreads by count until rates come in. Ties go to the actor with
fewer sources, then to the first in order, so placement is deterministic.

Example:
    >>> loads = {"a": [30.0, 30.0], "b": [25.0], "c": [None]}
    >>> pick_actor(loads)
    'c'
    >>> pick_actor({"a": [30.0], "b": [10.0, 10.0]})
    'b'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["actor_load", "pick_actor", "spread"]


def _default_rate(loads: Mapping[str, Sequence[float | None]]) -> float:
    measured = [rate for rates in loads.values() for rate in rates if rate]
    return sum(measured) / len(measured) if measured else 1.0


def actor_load(rates: Sequence[float | None], default: float) -> float:
    """Sum of measured rates; an unmeasured source counts as `default`."""
    return sum(rate if rate else default for rate in rates)


def pick_actor(loads: Mapping[str, Sequence[float | None]]) -> str:
    """The actor (by name) that should take the next source; `loads` maps actor -> source rates."""
    if not loads:
        raise ValueError("no live actor to place a source on")
    default = _default_rate(loads)
    names = list(loads)
    return min(names, key=lambda name: (actor_load(loads[name], default), len(loads[name]), names.index(name)))


def spread(source_ids: Sequence[str], actors: Sequence[str]) -> dict[str, list[str]]:
    """Initial placement of sources not measured yet: one at a time onto the least loaded actor."""
    loads: dict[str, list[float | None]] = {name: [] for name in actors}
    placed: dict[str, list[str]] = {name: [] for name in actors}
    for source_id in source_ids:
        name = pick_actor(loads)
        loads[name].append(None)
        placed[name].append(source_id)
    return placed
