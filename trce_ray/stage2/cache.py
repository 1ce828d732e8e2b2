"""`trce-ray cache`: the trajectory cache, built by a Ray Data actor pool that holds the ORIGINAL pipeline.

A cache lives in `<cache.root>/<hash>/`, the hash covering everything that determines its content (model identity,
scheduler, steps, guidance, dtypes, image size, and every trajectory's prompts, seed and recorded steps):
`spec.json` (what was hashed), `shards/<kind>-NNNNN.parquet` (each written atomically: the unit of resume) and
`manifest.json` (written last: the cache is complete; it records each shard's size and sha256). A rerun whose
shards all match the manifest does nothing; a missing or damaged shard is sampled again; an interrupted run redoes
only missing shards; Ray Data restarts a killed actor and reruns only its shard. One process builds a cache at a
time (a lock beside its folder; a second one waits, then reuses it). `last_used` is touched on every use, for
`trce-ray cache ls/prune`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifacts import sha256_file, write_json
from ..config import TRCEConfig
from ..errors import TRCEError
from ..interrupts import keep
from ..locks import hold
from ..models.loading import model_fingerprint
from ..ray_runtime import ensure_ray
from ..reservations import Pool, map_pool, reserved
from .plan import MALICIOUS, UNCONDITIONAL, TrajectorySpec, sampling_cost
from .sampler import TENSOR_COLUMNS
from .shards import read_shard, shard_meta, write_shard

FORMAT = "trce-ray-trajectories/2"  # 2: the family's scheduler, float timesteps, the denoiser's own (scaled) input
LAST_USED = "last_used"


def cache_spec(cfg: TRCEConfig, specs: list[TrajectorySpec]) -> dict:
    """Everything that determines the cache content; its hash names the cache folder."""
    c = cfg.cache
    return {
        "format": FORMAT,
        "model": model_fingerprint(cfg.model.path),
        "model_dtype": cfg.model.dtype,
        "scheduler": "family",  # the adapter's sampling_scheduler; the model hash covers the scheduler config
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


def cache_root(cfg: TRCEConfig) -> Path:
    """`cache.root`, checked: a folder (made if absent), not a file."""
    root = Path(cfg.cache.root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise TRCEError(f"cache.root {root} is a file; give a folder for the trajectory caches (--cache-root)")
    return root


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
    path = cache_root(cfg) / cache_key(spec)[:20]
    layout = shard_layout(specs, cfg.cache.shard_size)
    manifest = _verified_manifest(path, repair=False)  # lock-free first: a read-only shared cache stays usable
    if manifest is not None:
        _touch(path)
        return CacheInfo(path, True, 0, len(layout), manifest["denoiser_rows"], time.perf_counter() - t0)
    with hold(path, "trajectory cache", wait=True):
        manifest = _verified_manifest(path, repair=True)  # another process may have finished it while we waited
        if manifest is not None:
            _touch(path)
            return CacheInfo(path, True, 0, len(layout), manifest["denoiser_rows"], time.perf_counter() - t0)
        shard_dir = path / "shards"
        try:
            shard_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TRCEError(f"cannot write the trajectory cache in {path}: {err.strerror}") from None
        if not (path / "spec.json").is_file():
            write_json(path / "spec.json", spec)
        missing = [name for name, _ in layout if not _shard_ok(shard_dir / name, {})]
        keep(f"the finished shards of the trajectory cache in {path}")
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
        manifest = _write_manifest(path, spec, layout, cfg.model.path)
        _touch(path)
    return CacheInfo(path, False, len(missing), len(layout), manifest["denoiser_rows"], time.perf_counter() - t0)


def _verified_manifest(path: Path, repair: bool) -> dict | None:
    """The manifest if every shard it lists is on disk with its recorded size and hash, else None.

    Args:
        repair: delete damaged shards and the manifest, so the build that follows samples them again (only
            under the cache's lock).
    """
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    bad = [path / s["file"] for s in manifest.get("shards", []) if not _shard_ok(path / s["file"], s)]
    if not bad and manifest.get("shards"):
        return manifest
    if not repair:
        return None
    print(
        f"trajectory cache {path}: {len(bad)} shard(s) missing or damaged ({bad[0].name if bad else 'no shards'}); "
        "sampling them again",
        file=sys.stderr,
    )
    for f in bad:
        f.unlink(missing_ok=True)
    (path / "manifest.json").unlink()
    return None


def check_format(cache_dir: Path, manifest: dict) -> None:
    """Refuse a cache written in another format (older ones stored integer timesteps and always sampled DDIM)."""
    found = manifest.get("format")
    if found != FORMAT:
        raise TRCEError(
            f"the trajectory cache {cache_dir} has format {found!r}, this trce-ray reads {FORMAT!r}; build a new one "
            "(rerun `trce-ray cache` or `trce-ray train`; `trce-ray cache prune` removes the old one)"
        )


def _shard_ok(f: Path, entry: dict) -> bool:
    if not f.is_file():
        return False
    if "sha256" not in entry:  # a manifest written before sizes and hashes were recorded: the footer must read
        try:
            shard_meta(f)
            return True
        except (OSError, ValueError, KeyError):
            return False
    return f.stat().st_size == entry["bytes"] and sha256_file(f) == entry["sha256"]


def _touch(path: Path) -> None:
    """Record a use of the cache (what `trce-ray cache prune --older-than` goes by)."""
    try:
        (path / LAST_USED).touch()
    except OSError:
        pass  # a read-only shared cache is still usable


def _run_actor_pool(job, missing, num_actors, num_cpus, num_gpus, worker_cls, progress) -> None:
    from tqdm.auto import tqdm

    ensure_ray()
    import ray.data

    ctx = ray.data.DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # one tqdm bar in shards is clearer than Ray's per-operator bars
    actors = min(num_actors, len(missing))
    try:
        with reserved("the trajectory cache", [Pool(actors, num_cpus, num_gpus)]) as reservation:
            ds = ray.data.from_items([{"shard": name} for name in missing], override_num_blocks=len(missing))
            ds = map_pool(
                ds,
                worker_cls,
                reservation,
                0,
                fn_constructor_kwargs={"job": job},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
            )
            with tqdm(total=len(missing), desc="trajectory cache", unit="shard", disable=not progress) as bar:
                for _ in ds.iter_rows():
                    bar.update(1)
    except TRCEError:
        raise
    except Exception as err:
        raise TRCEError(f"building the trajectory cache failed: {_root_cause(err)}") from err
    finally:
        ctx.enable_progress_bars = old_bars


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def _write_manifest(path: Path, spec: dict, layout, model_path: str) -> dict:
    shards, rows, cost = [], {MALICIOUS: 0, UNCONDITIONAL: 0}, 0
    latent_shape = None
    for name, group in layout:
        meta = shard_meta(path / "shards" / name)
        if meta["items"] != [s.index for s in group]:
            raise TRCEError(f"cache shard {path / 'shards' / name} does not hold the planned trajectories; delete it")
        n = sum(len(s.record) for s in group)
        f = path / "shards" / name
        shards.append(
            {
                "file": f"shards/{name}",
                "kind": meta["kind"],
                "items": meta["items"],
                "rows": n,
                "bytes": f.stat().st_size,
                "sha256": sha256_file(f),
            }
        )
        rows[meta["kind"]] += n
        cost += meta["denoiser_rows"]
        latent_shape = meta["latent_shape"]
    manifest = {
        "format": FORMAT,
        "key": cache_key(spec),
        "model_path": model_path,  # for `trce-ray cache ls`; the key holds the model's content fingerprint
        "trajectories": len(spec["trajectories"]),
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
        out["t"] = torch.from_numpy(self.columns["t"][rows].astype(np.float32))  # exact: float32 schedule values
        return out


def load_rows(cache_dir: str | Path, kind: str, items: set[int]) -> CachedRows:
    """Read the records of trajectories `items` of one kind (only the shards that hold them)."""
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        raise TRCEError(f"{cache_dir} is not a complete trajectory cache (no manifest.json); run `trce-ray cache`")
    manifest = json.loads(manifest_path.read_text())
    check_format(cache_dir, manifest)
    parts: dict[str, list] = {}
    for shard in manifest["shards"]:
        if shard["kind"] != kind or not items.intersection(shard["items"]):
            continue
        try:
            cols = read_shard(cache_dir / shard["file"])
        except (OSError, ValueError) as err:  # pyarrow's errors derive from these
            raise TRCEError(
                f"cache shard {cache_dir / shard['file']} is missing or damaged ({type(err).__name__}); rerun the "
                "command: it samples damaged shards again"
            ) from None
        keep = np.isin(cols["item"], list(items))
        for k, v in cols.items():
            parts.setdefault(k, []).append(v[keep])
    if not parts:
        raise TRCEError(f"the trajectory cache {cache_dir} holds no {kind} records for the planned draws")
    return CachedRows(kind, {k: np.concatenate(v) for k, v in parts.items()})


@dataclass
class CacheEntry:
    """One cache folder under a cache root, as `trce-ray cache ls` shows it."""

    path: Path
    bytes: int
    last_used: float  # seconds since the epoch: `last_used`, else the newest file
    complete: bool
    in_use: bool  # a process holds its lock now
    model: str  # the model path it was built from ("?" before it completed)
    settings: str  # steps, guidance, trajectories, store dtype


def list_caches(root: str | Path) -> list[CacheEntry]:
    """Every trajectory cache under `root`, least recently used first."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / "spec.json").is_file()):
        spec = json.loads((d / "spec.json").read_text())
        settings = (
            f"{len(spec['trajectories'])} trajectories, {spec['steps']} steps, guidance {spec['guidance']:g}, "
            f"{spec['store_dtype']}"
        )
        out.append(folder_entry(d, settings))
    return sorted(out, key=lambda e: e.last_used)


def folder_entry(d: Path, settings: str) -> CacheEntry:
    """A content-addressed folder (spec.json, manifest.json written last, `last_used`) as `cache ls` shows it."""
    from ..locks import lock_path

    files = [f for f in d.rglob("*") if f.is_file()]
    stamp = d / LAST_USED
    last = stamp.stat().st_mtime if stamp.is_file() else max((f.stat().st_mtime for f in files), default=0.0)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    model = (manifest or {}).get("model_path") or "?"
    size = sum(f.stat().st_size for f in files)
    return CacheEntry(d, size, last, manifest is not None, _locked(lock_path(d)), model, settings)


def _locked(path: Path) -> bool:
    import fcntl

    if not path.is_file():
        return False
    try:
        with open(path) as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def caches_to_prune(
    entries: list[CacheEntry], older_than_s: float | None, max_bytes: int | None, now: float | None = None
) -> list[CacheEntry]:
    """What `prune` removes: caches unused for `older_than_s`, then the least recently used until the rest fit in
    `max_bytes`. Caches in use are never chosen."""
    now = time.time() if now is None else now
    chosen = [e for e in entries if older_than_s is not None and now - e.last_used > older_than_s]
    if max_bytes is not None:
        left = sum(e.bytes for e in entries if e not in chosen)
        for e in sorted(entries, key=lambda e: e.last_used):
            if left <= max_bytes:
                break
            if e not in chosen:
                chosen.append(e)
                left -= e.bytes
    return [e for e in chosen if not e.in_use]


def remove_cache(entry: CacheEntry) -> bool:
    """Delete one cache under its lock; False when a process started using it meanwhile."""
    import shutil

    try:
        with hold(entry.path, "trajectory cache"):
            shutil.rmtree(entry.path)
    except TRCEError:
        return False
    return True
