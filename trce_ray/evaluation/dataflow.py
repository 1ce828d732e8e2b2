"""The Ray Data pipeline of an evaluation: rows -> [generation actors] -> [scoring actors] -> the driver.

Both stages are `map_batches` over callable classes with fixed-size actor pools; they stream, so scoring overlaps
generation. Both pools' actors are reserved together before any starts (`trce_ray/reservations.py`), so an
evaluation never holds part of its actors while it waits for the rest. Ray Data restarts a dead actor (in its
bundle) and retries its batch (its defaults: `max_restarts=-1`, `max_task_retries=-1`); the generator skips images
already on disk, so each image is generated once.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import TRCEError
from ..ray_runtime import ensure_ray
from ..reservations import Pool, map_pool, reserved


@dataclass(frozen=True)
class Stage:
    cls: type  # callable class taking `spec=` in its constructor
    spec: object  # frozen settings handed to every actor
    actors: int = 1
    batch_size: int = 8
    gpus: float = 0.0
    cpus: float = 1.0


def cluster_gpus() -> float:
    return float(ensure_ray().cluster_resources().get("GPU", 0.0))


def _check_capacity(stages: list[Stage]) -> None:
    ray = ensure_ray()
    have = ray.cluster_resources()
    need_cpu = sum(s.actors * s.cpus for s in stages)
    need_gpu = sum(s.actors * s.gpus for s in stages)
    if need_cpu > have.get("CPU", 0) or need_gpu > have.get("GPU", 0):
        # An autoscaling cluster may still grow to fit, so this is a warning, not an error.
        warnings.warn(
            f"the evaluation's actors need {need_cpu:g} CPUs and {need_gpu:g} GPUs but the Ray cluster has "
            f"{have.get('CPU', 0):g} and {have.get('GPU', 0):g} now; it waits until they are free",
            stacklevel=3,
        )


_TRCE_LINE = re.compile(r"trce_ray\.errors\.(?:TRCEError|ConfigError): (.+)")


def _user_error(err: BaseException) -> str | None:
    """The sentence of a TRCEError raised inside an actor (Ray keeps only its text in the wrapped traceback)."""
    found = _TRCE_LINE.findall(str(err))
    return found[-1].strip() if found else None


def records(batch: dict[str, np.ndarray]) -> list[dict]:
    cols = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for k, v in batch.items()}
    n = len(next(iter(cols.values()))) if cols else 0
    return [{k: cols[k][i] for k in cols} for i in range(n)]


def run_stages(
    rows: list[dict],
    stages: list[Stage],
    desc: str = "images",
    progress: bool = True,
    on_batch: Callable[[list[dict], float], None] | None = None,
) -> list[dict]:
    """Run `rows` through `stages` on the Ray cluster; returns the output rows (in completion order).

    Args:
        rows: plain dicts (str/int/float values), one per image.
        on_batch: called with (the batch's output rows, time.perf_counter()) as each batch reaches the driver.
    """
    if not rows:
        return []
    ray = ensure_ray()
    _check_capacity(stages)
    ctx = ray.data.DataContext.get_current()
    previous = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # one bar (ours, in images/s) instead of one per operator
    data_log = logging.getLogger("ray.data")
    previous_level = data_log.level
    data_log.setLevel(logging.WARNING)  # Ray Data's per-dataset INFO lines go to its log file only
    pools = [Pool(st.actors, st.cpus, st.gpus) for st in stages]
    try:
        with reserved("the evaluation", pools) as reservation:
            return _stream(ray, rows, stages, reservation, desc, progress, on_batch)
    finally:
        ctx.enable_progress_bars = previous
        data_log.setLevel(previous_level)


def _stream(ray, rows, stages, reservation, desc, progress, on_batch) -> list[dict]:
    """The pipeline itself, its actors placed in the phase's reservation."""
    from tqdm.auto import tqdm

    blocks = max(1, min(len(rows), math.ceil(len(rows) / stages[0].batch_size)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    for i, st in enumerate(stages):
        ds = map_pool(
            ds,
            st.cls,
            reservation,
            i,
            fn_constructor_kwargs={"spec": st.spec},
            compute=ray.data.ActorPoolStrategy(size=st.actors),
            batch_size=st.batch_size,
            num_gpus=st.gpus,
            num_cpus=st.cpus,
            batch_format="numpy",
        )
    out: list[dict] = []
    try:
        with tqdm(total=len(rows), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                recs = records(batch)
                failed = [r["error"] for r in recs if r.get("error")]
                if failed:
                    raise TRCEError(failed[0])
                out.extend(recs)
                bar.update(len(recs))
                if on_batch is not None:
                    on_batch(recs, time.perf_counter())
    except TRCEError:
        raise
    except Exception as err:
        user = _user_error(err)
        if user is not None:
            raise TRCEError(user) from None
        raise
    return out
