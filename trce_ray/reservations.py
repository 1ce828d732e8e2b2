"""All of a phase's actors reserved at once: one placement group per Ray Data phase, held while it runs.

Ray Data starts an actor pool's actors one by one as room appears (`DataContext.wait_for_min_actors_s` is -1 by
default: nothing waits for the whole pool), so two phases that compete for a cluster can each hold part of what
they need. A phase here first reserves a bundle for every actor of all its pools in one placement group, waits
until Ray grants the whole group (all bundles or none), schedules each pool's actors into their own bundles, and
removes the group when the phase ends, on error too. Ray Train V2 already does the same for its workers (its
`WorkerGroup._start_impl` waits for a placement group of one bundle per worker before it creates any).

`TRCE_RESERVE_TIMEOUT` (seconds; unset: wait as long as it takes) bounds the wait.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import TRCEError
from .ray_runtime import ensure_ray

TIMEOUT_ENV = "TRCE_RESERVE_TIMEOUT"
_QUIET_WAIT_S = 1.0  # a grant within this long is not worth a line


@dataclass(frozen=True)
class Pool:
    """One actor pool of a phase: `actors` actors of `cpus` CPUs and `gpus` GPUs each."""

    actors: int
    cpus: float
    gpus: float = 0.0

    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", float(self.cpus)), ("GPU", float(self.gpus))) if v > 0}


class BundleCycle:
    """Hands each new actor of one pool the next of the pool's bundles (Ray Data calls it before each actor start).

    Pinning a pool to its own bundles matters when a phase has pools of different shapes: an actor free to take any
    bundle could take a CPU from a GPU bundle and leave the other pool's actor no bundle to fit in. A restarted actor
    keeps its bundle (Ray restarts it with the same options); a replacement for one that died while starting gets
    the next bundle in turn: its own when the pool has one actor, else the pool runs one short until that bundle
    frees, never with another pool's bundle.
    """

    def __init__(self, group, indices: list[int]):
        self.group, self.indices, self.started = group, indices, 0

    def __call__(self) -> dict:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        index = self.indices[self.started % len(self.indices)]
        self.started += 1
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)
        return {"scheduling_strategy": strategy}


@dataclass
class Reservation:
    """A granted placement group; `remote_args(i)` places pool i's actors (keyword arguments of `map_batches`)."""

    group: object
    first_bundle: list[int]  # index of each pool's first bundle
    pools: list[Pool]

    def remote_args(self, pool: int) -> dict:
        p = self.pools[pool]
        if not p.bundle():
            return {}  # an actor that needs no resources needs no reservation
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        start = self.first_bundle[pool]
        return {
            "ray_remote_args_fn": BundleCycle(self.group, list(range(start, start + p.actors))),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=start),
        }


def map_pool(ds, fn, reservation: Reservation, pool: int, **kwargs):
    """`ds.map_batches(fn, **kwargs)` with pool `pool`'s actors placed in its bundles of `reservation`.

    Ray 2.60 (pinned) warns that `map_batches`' `ray_remote_args_fn` and its extra remote arguments (here
    `scheduling_strategy`) go away in Ray 2.64; its only other placement-group route, `DataContext.
    scheduling_strategy`, gives every operator the same strategy, so each pool could not keep to its own bundles.
    The two warnings are silenced here, where the choice is made; moving past Ray 2.63 means revisiting it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args(_fn)?` is deprecated")
        return ds.map_batches(fn, **kwargs, **reservation.remote_args(pool))


def _timeout() -> float | None:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise TRCEError(f"{TIMEOUT_ENV}={raw} is not a number of seconds") from None


def _describe(pools: list[Pool]) -> str:
    cpus = sum(p.actors * p.cpus for p in pools)
    gpus = sum(p.actors * p.gpus for p in pools)
    n = sum(p.actors for p in pools if p.bundle())
    return f"{n} actor bundle(s): {cpus:g} CPU, {gpus:g} GPU"


def _wait(group, what: str, pools: list[Pool], timeout: float | None) -> None:
    """Wait in short steps (Ctrl-C stays prompt); one line when the grant is not immediate."""
    t0 = time.monotonic()
    announced = False
    while not group.wait(_QUIET_WAIT_S):
        waited = time.monotonic() - t0
        if timeout is not None and waited >= timeout:
            raise TRCEError(
                f"{what} waited {timeout:g} s ({TIMEOUT_ENV}) for {_describe(pools)} and the cluster did not free "
                "them; free the cluster, lower its actors' resources or raise the timeout"
            )
        if not announced:
            print(f"{what}: waiting for the cluster to grant {_describe(pools)} at once", file=sys.stderr)
            announced = True
    if announced:
        print(f"{what}: reserved after {time.monotonic() - t0:.1f} s", file=sys.stderr)


@contextmanager
def reserved(what: str, pools: list[Pool]) -> Iterator[Reservation]:
    """Reserve one bundle per actor of every pool in one placement group and hold it for the `with` block.

    Args:
        what: the phase, for the log line and the error ("the evaluation", "the trajectory cache").
        pools: the phase's actor pools, in the order `remote_args` is asked for them.

    Raises:
        TRCEError: the group was not granted within `TRCE_RESERVE_TIMEOUT` seconds.
    """
    ensure_ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles, first = [], []
    for p in pools:
        first.append(len(bundles))
        if p.bundle():
            bundles.extend([p.bundle()] * p.actors)
    if not bundles:
        yield Reservation(None, first, pools)
        return
    # SPREAD, as Ray Data places its actors by default (DataContext.scheduling_strategy), so a pool lands on the
    # nodes it landed on before; both are soft, so one node that holds every bundle also does.
    group = placement_group(bundles, strategy="SPREAD", name=f"trce {what} {uuid.uuid4().hex[:8]}")
    try:
        _wait(group, what, pools, _timeout())
        yield Reservation(group, first, pools)
    finally:
        remove_placement_group(group)
