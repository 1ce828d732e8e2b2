"""`trce-ray train`: plan -> cache -> Ray Train `TorchTrainer` -> an erase output folder with `stage2.safetensors`.

Checkpoints go to a work folder beside the output (`.<name>.work/`, or `train.storage` on a cluster); rerunning the
same command resumes from the latest checkpoint of the same job (same config, cache and stage-1 edit).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..artifacts import atomic_dir, check_output, delta_metadata, load_delta, write_json
from ..config import TRCEConfig
from ..config.stage2 import ABLATIONS
from ..errors import TRCEError
from ..interrupts import handlers_installed, keep
from ..locks import hold
from ..ray_runtime import ensure_ray
from .cache import CacheInfo, build_cache
from .plan import DrawPlan, TrajectorySpec, make_plan
from .worker import DELTA_FILE, METRICS_FILE, NonFiniteLoss, TrainJob, train_loop_per_worker

STAGE1_FILES = ("stage1.safetensors", "prompts.json", "stage1_summary.json")


@dataclass
class Stage2Result:
    output: Path
    cache: CacheInfo
    steps: int
    final_loss: float
    delta_names: list[str]


def work_dir(output: str | Path) -> Path:
    """Where resumable progress of `output` lives until it is complete."""
    output = Path(output).expanduser().resolve()
    return output.parent / f".{output.name}.work"


def plan_for(cfg: TRCEConfig) -> tuple[DrawPlan, list[TrajectorySpec]]:
    """The draws and trajectories of `cfg`, from the stage-1 prompt pairs (the paper reuses P^m and P^s)."""
    from ..stage1.run import stage1_prompts

    if cfg.stage1 is None:
        raise TRCEError("stage 2 needs the malicious prompts: give --concept or --erase-prompts/--target-prompts")
    pairs, _ = stage1_prompts(cfg.stage1)
    return make_plan(cfg, [(p.erase, p.target) for p in pairs])


def check_stage1_dir(cfg: TRCEConfig, stage1_dir: str | Path) -> Path:
    """The stage-1 folder stage 2 starts from, as an absolute path (workers on other nodes and other working
    directories read it), after checking its delta is readable and was made from this config's model.

    Raises:
        TRCEError: not a stage-1 folder, an unreadable stage1.safetensors (naming it), or another base model.
    """
    from ..models.erased import check_base_fingerprint

    d = Path(stage1_dir).expanduser().resolve()
    if not d.is_dir():
        raise TRCEError(f"stage-1 folder {stage1_dir} does not exist")
    if not (d / "stage1.safetensors").is_file() or not (d / "config.yaml").is_file():
        raise TRCEError(f"{d} is not a stage-1 output folder (needs stage1.safetensors and config.yaml)")
    delta = d / "stage1.safetensors"
    load_delta(delta)  # a damaged file fails here, naming itself, not later on a worker
    if cfg.model.check_base and delta_metadata(delta).get("base_fingerprint"):
        check_base_fingerprint(cfg.model.path, [delta])
    else:  # made before fingerprints were stamped (or the check is off): the recorded path must match
        base = yaml.safe_load((d / "config.yaml").read_text())["model"]["path"]
        if cfg.model.check_base and base != cfg.model.path:
            raise TRCEError(f"the stage-1 edit in {d} was made for model {base!r}, not {cfg.model.path!r}")
    return d


def _file_hash(path: Path | None) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else "none"


def _use_gpu(cfg: TRCEConfig) -> bool:
    if cfg.train.use_gpu is not None:
        return cfg.train.use_gpu
    if cfg.train.num_workers == 0:
        import torch

        return torch.cuda.is_available()
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def check_precision(cfg: TRCEConfig) -> None:
    """Mixed precision is a GPU path: on CPU, bf16 matmuls are slow and DeepSpeed's CPU engine does not train in
    half precision, so it is refused before anything runs.

    Raises:
        TRCEError: `train.mixed_precision` is bf16/fp16 and the workers would get no GPU.
    """
    mp = cfg.train.mixed_precision
    if mp == "no":
        return
    if cfg.train.use_gpu is None and cfg.train.num_workers > 0:
        ensure_ray()
    if not _use_gpu(cfg):
        raise TRCEError(
            f"train.mixed_precision {mp} needs GPUs and the training workers get none here; use mixed_precision: no "
            "on CPU (fp32, also with DeepSpeed ZeRO-2/3)"
        )


def run_stage2(
    cfg: TRCEConfig,
    output: str | Path,
    stage1_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    train_loop: Callable[[dict], None] = train_loop_per_worker,
) -> Stage2Result:
    """Build (or reuse) the cache, fine-tune with Ray Train, and write the erase folder `output` atomically.

    Args:
        stage1_dir: a stage-1 output folder to start from; None starts from the original model (TRCE(V)).
        train_loop: the Ray Train loop each worker runs, given {"job": TrainJob} (tests pass one that runs a
            `TrainWorker` subclass: fault drills, counters).
    """
    from ..models.loading import model_fingerprint, resolve_model_path

    output = Path(output).expanduser().resolve()
    with hold(output):
        check_output(output, overwrite)
        s1 = check_stage1_dir(cfg, stage1_dir) if stage1_dir is not None else None
        check_precision(cfg)
        plan, specs = plan_for(cfg)
        cache = build_cache(cfg, specs, progress)
        delta_path = s1 / "stage1.safetensors" if s1 else None
        operational = {"max_failures", "storage", "checkpoint_every", "cpus_per_worker"}  # do not change weights
        operational |= {k for k in ABLATIONS if getattr(cfg.train, k)}  # on (default): the job ids of before
        job_id = hashlib.sha256(
            json.dumps(
                {
                    "train": cfg.train.model_dump(mode="json", exclude=operational),
                    "seed": cfg.seed,
                    "cache": cache.path.name,
                    "stage1": _file_hash(delta_path),
                    "model": cfg.model.path,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        work = work_dir(output)
        storage = Path(cfg.train.storage).expanduser().resolve() if cfg.train.storage else work / "train"
        run_name = f"stage2-{job_id}"
        local = cfg.train.num_workers == 0
        job = TrainJob(
            cfg=cfg,
            model_path=resolve_model_path(cfg.model.path),
            stage1_delta=str(delta_path) if delta_path else None,
            cache_dir=str(cache.path),
            plan=plan,
            prompts={s.index: s.prompt for s in specs if s.kind == "malicious"},
            delta_metadata={
                "base_model": cfg.model.path,
                "base_fingerprint": model_fingerprint(cfg.model.path),
                "stage": "2",
                "params": cfg.train.params,
                "on_stage1": "yes" if delta_path else "no",
            },
            progress=progress,
            local_checkpoints=str(storage / run_name / "local") if local else None,
        )
        with hold(storage / run_name, "stage-2 checkpoint folder"):  # `train.storage` may be shared by outputs
            result = _fit(cfg, job, storage, run_name, train_loop)
            metrics, names = _write_output(cfg, output, overwrite, s1, result, cache, plan, job)
            shutil.rmtree(storage / run_name, ignore_errors=True)
        _remove_if_empty(storage, work)
    return Stage2Result(output, cache, plan.steps, metrics[-1]["loss"], names)


def _fit(cfg: TRCEConfig, job: TrainJob, storage: Path, run_name: str, train_loop):
    """Ray Train's `TorchTrainer.fit`, resuming from the checkpoints under `storage / run_name`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _register_sigint_handler(self, controller):
            # Ray's own Ctrl-C handler aborts the run and exits 1; under the CLI, SIGINT must unwind like SIGTERM
            # (say what was kept, exit 130). Called from Python, Ray's handler stays.
            if not handlers_installed():
                super()._register_sigint_handler(controller)

    storage.mkdir(parents=True, exist_ok=True)
    keep(f"the stage-2 checkpoints in {storage / run_name}")
    ensure_ray()
    t = cfg.train
    trainer = Trainer(
        train_loop,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=_use_gpu(cfg), resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )
    kept = f"checkpoints kept in {storage / run_name}; rerun to resume"
    try:
        return trainer.fit()
    except TrainingFailedError as err:
        raise TRCEError(f"{_worker_message(err)} ({kept})") from err
    except NonFiniteLoss as err:  # local mode raises the worker's own exception
        raise TRCEError(f"{err} ({kept})") from err


def _write_output(cfg, output, overwrite, s1, result, cache, plan, job) -> tuple[list[dict], list[str]]:
    """The erase folder from the last checkpoint: stage-1 files (if any), stage2.safetensors, metrics, summary."""
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        if not (d / DELTA_FILE).is_file():
            raise TRCEError(f"the last checkpoint {d} holds no {DELTA_FILE}; the run did not finish")
        metrics = [json.loads(x) for x in (d / METRICS_FILE).read_text().splitlines() if x]
        with atomic_dir(output, overwrite=overwrite) as tmp:
            if s1:
                for name in STAGE1_FILES:
                    if (s1 / name).is_file():
                        shutil.copy2(s1 / name, tmp / name)
            shutil.copy2(d / DELTA_FILE, tmp / DELTA_FILE)
            shutil.copy2(d / METRICS_FILE, tmp / METRICS_FILE)
            (tmp / "config.yaml").write_text(cfg.to_yaml())
            from safetensors import safe_open

            with safe_open(str(tmp / DELTA_FILE), framework="pt") as f:
                names = list(f.keys())
            summary = {
                "steps": plan.steps,
                "final_loss": metrics[-1]["loss"],
                "base_fingerprint": job.delta_metadata["base_fingerprint"],
                "cache": str(cache.path),
                "cache_denoiser_rows": cache.denoiser_rows,
                "cache_reused": cache.reused,
                "tensors": len(names),
                "start": "stage1" if s1 else "original",
            }
            write_json(tmp / "stage2_summary.json", summary)
    return metrics, names


def training_curve(folder: str | Path) -> list[dict]:
    """Per-step metrics of a stage-2 output folder (step, loss, erase, preserve, seconds)."""
    return [json.loads(line) for line in (Path(folder) / METRICS_FILE).read_text().splitlines() if line]


def log_training_curve(tracker, folder: str | Path) -> None:
    """The per-step loss curve of a stage-2 output folder as MLflow metrics (a no-op tracker logs nothing)."""
    for row in training_curve(folder):
        tracker.log_metrics({k: row[k] for k in ("loss", "erase", "preserve")}, step=row["step"])


def _remove_if_empty(*folders: Path) -> None:
    for f in folders:
        try:
            f.rmdir()
        except OSError:
            pass


def _worker_message(err: Exception) -> str:
    failures = getattr(err, "worker_failures", None) or {}
    for exc in failures.values():
        text = str(exc).strip().splitlines()
        for line in reversed(text):
            if "NonFiniteLoss" in line or "stage-2 loss" in line:
                return line.split("NonFiniteLoss: ")[-1]
        return f"training failed on a worker: {text[-1] if text else type(exc).__name__}"
    return f"training failed: {str(err).strip().splitlines()[-1]}"
