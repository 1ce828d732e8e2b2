"""`trce-ray cache`: the trajectory cache, built by a Ray Data actor pool that holds the ORIGINAL pipeline.

A cache lives in `<cache.root>/<hash>/`, the hash covering everything that determines its content (model identity,
scheduler, steps, guidance, dtypes, image size, and every trajectory's prompts, seed and recorded steps):
`spec.json` (what was hashed), `shards/<kind>-NNNNN.parquet` (each written atomically: the unit of resume) and
`manifest.json` (written last: the cache is complete). A rerun with a complete manifest does nothing; an
interrupted run redoes only missing shards; Ray Data restarts a killed actor and reruns only its shard.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifacts import write_json
from ..config import TRCEConfig
from ..errors import TRCEError
from .plan import MALICIOUS, UNCONDITIONAL, TrajectorySpec, sampling_cost
from .sampler import TENSOR_COLUMNS
from .shards import read_shard, shard_meta, write_shard

FORMAT = "trce-ray-trajectories/1"
_IDENTITY_MEMO: dict[tuple, str] = {}
_SKIP_DIRS = {"vae", "safety_checker", "feature_extractor"}  # never used to build a cache


def model_identity(path: str) -> str:
    """Content hash of the files that shape trajectories (denoiser, text encoders, tokenizers, scheduler); a hub id
    stands for itself."""
    from ..models.loading import resolve_model_path

    root = Path(resolve_model_path(path)).expanduser()
    if not root.is_dir():
        return f"hub:{path}"
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in _SKIP_DIRS)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _IDENTITY_MEMO:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
        _IDENTITY_MEMO[stamp] = h.hexdigest()
    return _IDENTITY_MEMO[stamp]


def cache_spec(cfg: TRCEConfig, specs: list[TrajectorySpec]) -> dict:
    """Everything that determines the cache content; its hash names the cache folder."""
    c = cfg.cache
    return {
        "format": FORMAT,
        "model": model_identity(cfg.model.path),
        "model_dtype": cfg.model.dtype,
        "scheduler": "DDIMScheduler",
        "steps": c.steps,
        "guidance": c.guidance,
        "store_dtype": c.store_dtype,
        "height": c.height,
        "width": c.width,
        "trajectories": [s.to_json() for s in specs],
    }


def cache_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cache_dir_for(cfg: TRCEConfig, specs: list[TrajectorySpec]) -> Path:
    return Path(cfg.cache.root).expanduser().resolve() / cache_key(cache_spec(cfg, specs))[:20]


def shard_layout(specs: list[TrajectorySpec], shard_size: int) -> list[tuple[str, list[TrajectorySpec]]]:
    """(file name, trajectories) per shard; the same specs always give the same layout."""
    out = []
    for kind in (MALICIOUS, UNCONDITIONAL):
        group = [s for s in specs if s.kind == kind]
        for i in range(0, len(group), shard_size):
            out.append((f"{kind}-{i // shard_size:05d}.parquet", group[i : i + shard_size]))
    return out


@dataclass(frozen=True)
class CacheJob:
    """The one frozen object every cache actor receives."""

    model_path: str  # resolved local folder or hub id
    allow_pickle: bool
    model_dtype: str
    device: str
    steps: int
    guidance: float
    height: int | None
    width: int | None
    batch_size: int
    store_dtype: str
    threads: int
    shard_dir: str
    shards: tuple[tuple[str, tuple[TrajectorySpec, ...]], ...]


class ShardWorker:
    """Ray Data callable class: loads the original pipeline once, then turns one shard id into one parquet file."""

    def __init__(self, job: CacheJob):
        from ..models import adapter_for, load_pipeline

        if job.device == "cpu":
            torch.set_num_threads(job.threads)
        self.job = job
        self.shards = dict(job.shards)
        self.adapter = adapter_for(load_pipeline(job.model_path, job.allow_pickle, job.model_dtype, job.device))
        self.latent_shape = self.adapter.latent_shape(job.height, job.width)

    def __call__(self, batch: dict) -> dict:
        from .sampler import sample_trajectories

        names, rows, cost = [], [], []
        for name in batch["shard"]:
            specs = list(self.shards[name])
            counter = [0]
            j = self.job
            rec = sample_trajectories(
                self.adapter, specs, j.steps, j.guidance, self.latent_shape, j.batch_size, counter
            )
            cols = rec.arrays(j.store_dtype)
            meta = {
                "kind": specs[0].kind,
                "items": [s.index for s in specs],
                "denoiser_rows": counter[0],
                "latent_shape": list(self.latent_shape),
            }
            write_shard(Path(j.shard_dir) / name, cols, meta)
            names.append(name)
            rows.append(len(cols["item"]))
            cost.append(counter[0])
        return {"shard": np.array(names), "rows": np.array(rows), "denoiser_rows": np.array(cost)}


@dataclass
class CacheInfo:
    path: Path
    reused: bool  # complete before this call: nothing was sampled
    shards_built: int  # shards sampled by this call
    shards_total: int
    denoiser_rows: int  # denoiser evaluations spent on the whole cache (all runs)
    seconds: float


def ensure_ray(num_cpus: int | None = None):
    """Join the cluster in RAY_ADDRESS if any, else start a local instance."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return ray


def build_cache(
    cfg: TRCEConfig, specs: list[TrajectorySpec], progress: bool = True, worker_cls: type = ShardWorker
) -> CacheInfo:
    """Build (or reuse, or finish) the cache for `specs` with a Ray Data actor pool; return where it is.

    Args:
        worker_cls: the callable class run by each actor (tests pass a subclass that kills its own actor once).
    """
    from ..models.loading import resolve_model_path

    t0 = time.perf_counter()
    spec = cache_spec(cfg, specs)
    path = Path(cfg.cache.root).expanduser().resolve() / cache_key(spec)[:20]
    layout = shard_layout(specs, cfg.cache.shard_size)
    if (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
        return CacheInfo(path, True, 0, len(layout), manifest["denoiser_rows"], time.perf_counter() - t0)
    shard_dir = path / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    if not (path / "spec.json").is_file():
        write_json(path / "spec.json", spec)
    missing = [name for name, _ in layout if not (shard_dir / name).is_file()]
    if missing:
        c = cfg.cache
        device = "cuda" if c.num_gpus > 0 else "cpu"  # what the actor gets, not what the driver has
        job = CacheJob(
            resolve_model_path(cfg.model.path),
            cfg.model.allow_pickle,
            cfg.model.dtype,
            device,
            c.steps,
            c.guidance,
            c.height,
            c.width,
            c.batch_size,
            c.store_dtype,
            max(1, int(c.num_cpus)),
            str(shard_dir),
            tuple((name, tuple(group)) for name, group in layout if name in missing),
        )
        _run_actor_pool(job, missing, c.num_actors, c.num_cpus, c.num_gpus, worker_cls, progress)
    manifest = _write_manifest(path, spec, layout)
    return CacheInfo(path, False, len(missing), len(layout), manifest["denoiser_rows"], time.perf_counter() - t0)


def _run_actor_pool(job, missing, num_actors, num_cpus, num_gpus, worker_cls, progress) -> None:
    from tqdm.auto import tqdm

    ensure_ray()
    import ray.data

    ctx = ray.data.DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # one tqdm bar in shards is clearer than Ray's per-operator bars
    try:
        ds = ray.data.from_items([{"shard": name} for name in missing], override_num_blocks=len(missing))
        ds = ds.map_batches(
            worker_cls,
            fn_constructor_kwargs={"job": job},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(num_actors, len(missing))),
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
        with tqdm(total=len(missing), desc="trajectory cache", unit="shard", disable=not progress) as bar:
            for _ in ds.iter_rows():
                bar.update(1)
    except Exception as err:
        raise TRCEError(f"building the trajectory cache failed: {_root_cause(err)}") from err
    finally:
        ctx.enable_progress_bars = old_bars


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def _write_manifest(path: Path, spec: dict, layout) -> dict:
    shards, rows, cost = [], {MALICIOUS: 0, UNCONDITIONAL: 0}, 0
    latent_shape = None
    for name, group in layout:
        meta = shard_meta(path / "shards" / name)
        if meta["items"] != [s.index for s in group]:
            raise TRCEError(f"cache shard {path / 'shards' / name} does not hold the planned trajectories; delete it")
        n = sum(len(s.record) for s in group)
        shards.append({"file": f"shards/{name}", "kind": meta["kind"], "items": meta["items"], "rows": n})
        rows[meta["kind"]] += n
        cost += meta["denoiser_rows"]
        latent_shape = meta["latent_shape"]
    manifest = {
        "format": FORMAT,
        "key": cache_key(spec),
        "steps": spec["steps"],
        "guidance": spec["guidance"],
        "store_dtype": spec["store_dtype"],
        "latent_shape": latent_shape,
        "rows": rows,
        "denoiser_rows": cost,
        "planned_denoiser_rows": sampling_cost(
            [TrajectorySpec(**{**t, "record": tuple(t["record"])}) for t in spec["trajectories"]]
        ),
        "shards": shards,
    }
    write_json(path / "manifest.json", manifest)
    return manifest


class CachedRows:
    """Rows of one kind loaded from a cache, looked up by (trajectory, step index)."""

    def __init__(self, kind: str, columns: dict[str, np.ndarray]):
        self.kind = kind
        self.columns = columns
        self.index = {(int(i), int(s)): r for r, (i, s) in enumerate(zip(columns["item"], columns["step"]))}

    def gather(self, items: np.ndarray, steps: np.ndarray, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Tensors (stacked over draws) for the given draws; `t` is the timestep of each record."""
        try:
            rows = [self.index[(int(i), int(s))] for i, s in zip(items, steps)]
        except KeyError as err:
            raise TRCEError(
                f"the trajectory cache has no {self.kind} record {err.args[0]}; it was built for "
                "another plan (rebuild it with the same cache/train settings)"
            ) from None
        out = {k: torch.from_numpy(self.columns[k][rows]).to(dtype) for k in TENSOR_COLUMNS[self.kind]}
        out["t"] = torch.from_numpy(self.columns["t"][rows].astype(np.int64))
        return out


def load_rows(cache_dir: str | Path, kind: str, items: set[int]) -> CachedRows:
    """Read the records of trajectories `items` of one kind (only the shards that hold them)."""
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        raise TRCEError(f"{cache_dir} is not a complete trajectory cache (no manifest.json); run `trce-ray cache`")
    manifest = json.loads(manifest_path.read_text())
    parts: dict[str, list] = {}
    for shard in manifest["shards"]:
        if shard["kind"] != kind or not items.intersection(shard["items"]):
            continue
        cols = read_shard(cache_dir / shard["file"])
        keep = np.isin(cols["item"], list(items))
        for k, v in cols.items():
            parts.setdefault(k, []).append(v[keep])
    if not parts:
        raise TRCEError(f"the trajectory cache {cache_dir} holds no {kind} records for the planned draws")
    return CachedRows(kind, {k: np.concatenate(v) for k, v in parts.items()})
