"""The Ray Train worker loop of stage 2: one denoiser (the stage-1 model), targets from the cache, DDP or DeepSpeed.

Every worker receives one frozen `TrainJob`. Per optimizer step it takes its share of the planned draws, runs ONE
batched forward of the trained denoiser over [z_m with c_m | z_m with empty | z_u with empty] (2 + R rows per erase
draw), and updates after `grad_accum` micro-steps. A non-finite loss stops every worker before the update, so the
last reported checkpoint stays the last good one.

`train_loop_per_worker` runs a `TrainWorker`; tests pass `run_stage2` a loop running a subclass (e.g. one whose
`after_step` kills the worker, or whose `_load` counts the models it builds).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TRCEConfig
from ..errors import TRCEError
from .plan import MALICIOUS, UNCONDITIONAL, DrawPlan

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
DELTA_FILE = "stage2.safetensors"
DS_TAG = "deepspeed"


@dataclass(frozen=True)
class TrainJob:
    """The one frozen object every training worker receives."""

    cfg: TRCEConfig
    model_path: str  # resolved base model (the original model)
    stage1_delta: str | None  # stage1.safetensors the training starts from; None trains from the original (TRCE(V))
    cache_dir: str
    plan: DrawPlan
    prompts: dict[int, str]  # malicious trajectory index -> its prompt (c_m)
    delta_metadata: dict[str, str]
    progress: bool = True  # worker 0's progress bar
    local_checkpoints: str | None = None  # Ray Train local mode (num_workers 0): checkpoint folders live here


class NonFiniteLoss(TRCEError):
    """The loss became NaN or inf; no update was applied."""


class _RoutedPipe:
    """A view of a pipeline whose denoiser attribute is the DDP/DeepSpeed wrapper, so `adapter.predict_noise` runs
    through the wrapper's gradient hooks while everything else is the pipeline's own."""

    def __init__(self, pipe, component: str, module):
        self._pipe, self._component, self._module = pipe, component, module

    def __getattr__(self, name):
        return self._module if name == self._component else getattr(self._pipe, name)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config` is {"job": TrainJob}."""
    TrainWorker(config["job"]).run()


class TrainWorker:
    """One training worker: loads the stage-1 model and its cached targets, then runs the planned steps."""

    def __init__(self, job: TrainJob):
        import ray.train
        import ray.train.torch

        self.job, self.t = job, job.cfg.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.local = job.local_checkpoints is not None
        if self.device.type == "cpu" and not self.local:  # local mode runs in the caller's process: keep its threads
            torch.set_num_threads(max(1, int(self.t.cpus_per_worker)))
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported
        torch.manual_seed(job.cfg.seed)  # LoRA initialisation
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    # ---- set-up -------------------------------------------------------------------------------------------------
    def _draws(self) -> list[tuple[int, int, tuple[np.ndarray, ...]]]:
        plan, acc = self.job.plan, self.t.grad_accum
        return [(s, a, plan.share(s, a, acc, self.rank, self.world)) for s in range(plan.steps) for a in range(acc)]

    def _load(self):
        from ..artifacts import apply_delta
        from ..models import adapter_for, load_pipeline
        from .cache import load_rows
        from .lora import denoiser_component
        from .params import select_trainable

        job = self.job
        pipe = load_pipeline(job.model_path, job.cfg.model.allow_pickle, "float32", "cpu")
        adapter = adapter_for(pipe)
        if job.stage1_delta:
            apply_delta(adapter.denoiser, job.stage1_delta)
        draws = self._draws()
        items_m = sorted({int(i) for _, _, d in draws for i in d[0]})
        items_u = {int(i) for _, _, d in draws for i in d[2]}
        conds = adapter.condition([job.prompts[i] for i in items_m] + [""])
        self.cond_row = {i: k for k, i in enumerate(items_m)}
        self.cond, self.empty_row = conds, len(items_m)
        self.rows_m = load_rows(job.cache_dir, MALICIOUS, set(items_m))
        self.rows_u = load_rows(job.cache_dir, UNCONDITIONAL, items_u)
        self.component = denoiser_component(pipe, adapter.denoiser)
        den = adapter.denoiser
        for name, module in list(pipe.components.items()):  # text encoders and VAE are done: free them
            if isinstance(module, torch.nn.Module) and module is not den:
                object.__setattr__(pipe, name, None)
        if self.t.lora_rank is not None:  # before LoRA injection renames weights
            self.lora_targets = adapter.lora_target_modules(self.t.params, self.t.blocks)
        self.trainable = select_trainable(adapter, self.t)
        params = dict(den.named_parameters())
        self.start = {n: params[n].detach().clone() for n in self.trainable}
        low = self.compute_dtype
        if low is not None and self.t.backend == "ddp":  # DeepSpeed casts the module itself
            for p in den.parameters():
                if not p.requires_grad:  # frozen weights in bf16; trained ones (and Adam) stay fp32
                    p.data = p.data.to(low)
        den.to(self.device).eval()  # no dropout anywhere: the step is a deterministic function of the plan
        if self.t.gradient_checkpointing:
            den.enable_gradient_checkpointing()
        self.adapter, self.pipe, self.den = adapter, pipe, den
        return [params[n] for n in self.trainable]

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """bf16/fp16 under `train.mixed_precision` (GPU only: the driver refuses it on CPU), else None."""
        mp = self.t.mixed_precision
        return (
            None
            if mp == "no" or self.device.type == "cpu"
            else getattr(torch, {"bf16": "bfloat16"}.get(mp, "float16"))
        )

    def _wrap(self, params):
        import ray.train.torch

        optimizer = torch.optim.Adam(params, lr=self.t.lr)
        if self.t.backend == "deepspeed":
            import deepspeed

            ds_config = {
                "train_micro_batch_size_per_gpu": self.t.batch_size // self.world,
                "gradient_accumulation_steps": self.t.grad_accum,
                "zero_optimization": {"stage": self.t.zero_stage},
                "bf16": {"enabled": self.t.mixed_precision == "bf16"},
                "fp16": {"enabled": self.t.mixed_precision == "fp16"},
                "zero_allow_untested_optimizer": True,
                "steps_per_print": 1 << 30,
            }
            engine, optimizer, _, _ = deepspeed.initialize(
                model=self.den, optimizer=optimizer, config=ds_config, dist_init_required=False
            )
            self.model, self.optimizer = engine, optimizer
        else:
            self.model = ray.train.torch.prepare_model(self.den, move_to_device=False)
            self.optimizer = optimizer
        self.routed = type(self.adapter)(_RoutedPipe(self.pipe, self.component, self.model))

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def _restore(self) -> tuple[int, list[dict]]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None and self.local:  # local mode does not restore by itself
            found = sorted(Path(self.job.local_checkpoints).glob("checkpoint_*"))
            ckpt = ray.train.Checkpoint.from_directory(str(found[-1])) if found else None
        if ckpt is None:
            return 0, []
        with ckpt.as_directory() as d:
            d = Path(d)
            metrics = [json.loads(line) for line in (d / METRICS_FILE).read_text().splitlines() if line]
            if self.t.backend == "deepspeed":
                _, client = self.model.load_checkpoint(str(d), tag=DS_TAG, load_module_strict=False)
                return int(client["step"]), metrics
            state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        params = dict(self.den.named_parameters())
        with torch.no_grad():
            for n, v in state["trainable"].items():
                params[n].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        return int(state["step"]), metrics

    def _report(self, step: int, metrics: list[dict], final: bool) -> None:
        """Checkpoint (every worker calls this: DeepSpeed saves one optimizer shard per worker) and report."""
        import ray.train

        self.last_checkpoint = step
        last = metrics[-1] if metrics else {}
        result = {"step": step, "loss": last.get("loss")}
        if self.local:  # local mode keeps the Checkpoint object only: the folder must outlive this call
            root = Path(self.job.local_checkpoints)
            partial, kept = root / f".partial_{step:06d}", root / f"checkpoint_{step:06d}"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            self._fill_checkpoint(partial, step, metrics, final)
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(partial, kept)
            for old in sorted(root.glob("checkpoint_*"))[:-2]:
                shutil.rmtree(old, ignore_errors=True)
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(str(kept)))
            return
        with tempfile.TemporaryDirectory() as tmp:
            self._fill_checkpoint(Path(tmp), step, metrics, final)
            has_files = any(Path(tmp).iterdir())
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)

    def _fill_checkpoint(self, d: Path, step: int, metrics: list[dict], final: bool) -> None:
        if self.t.backend == "deepspeed":
            self.model.save_checkpoint(str(d), tag=DS_TAG, client_state={"step": step}, exclude_frozen_parameters=True)
        elif self.rank == 0:
            state = {
                "trainable": {n: p.detach().cpu() for n, p in self.den.named_parameters() if n in self.start},
                "optimizer": self.optimizer.state_dict(),
                "step": step,
            }
            torch.save(state, d / STATE_FILE)
        if final:
            self._write_delta(d)
        if self.rank == 0:
            (d / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in metrics))

    def _write_delta(self, d: Path) -> None:
        from ..artifacts import save_delta
        from .lora import lora_tensors, save_lora

        if self.t.backend == "deepspeed":
            from deepspeed.utils import safe_get_full_fp32_param

            params = dict(self.den.named_parameters())
            # collective: ZeRO-3 gathers each partitioned weight (its fp32 master) on every rank
            full = {n: safe_get_full_fp32_param(params[n]).detach().cpu() for n in self.trainable}
        else:
            full = {n: p.detach().cpu() for n, p in self.den.named_parameters() if n in self.start}
        if self.rank != 0:
            return
        meta = dict(self.job.delta_metadata)
        if self.t.lora_rank is not None:
            save_lora(
                d / DELTA_FILE,
                lora_tensors(full),
                self.component,
                self.t.lora_rank,
                self.t.lora_alpha or self.t.lora_rank,
                self.lora_targets,
                meta,
            )
        else:
            start = {n: v.cpu() for n, v in self.start.items()}
            dtype = next(iter(start.values())).dtype
            changed = {n: v.to(dtype) for n, v in full.items() if not torch.equal(v.to(dtype), start[n])}
            save_delta(d / DELTA_FILE, changed, {**meta, "format": "trce-ray-delta", "stage": "2"})

    # ---- the step ---------------------------------------------------------------------------------------------------
    def _micro_loss(self, draws):
        from .loss import cached_draws_loss

        e_item, e_step, p_item, p_step = draws
        cond_m = self.cond[[self.cond_row[int(i)] for i in e_item]]
        empty = self.cond[[self.empty_row]]
        tc = self.t
        low = self.compute_dtype if tc.backend == "ddp" else None
        with torch.autocast(self.device.type, dtype=low) if low is not None else contextlib.nullcontext():
            return self._loss(cached_draws_loss, cond_m, empty, e_item, e_step, p_item, p_step)

    def _loss(self, cached_draws_loss, cond_m, empty, e_item, e_step, p_item, p_step):
        tc = self.t
        return cached_draws_loss(
            self.routed,
            cond_m,
            empty,
            self.rows_m.gather(e_item, e_step),
            self.rows_u.gather(p_item, p_step),
            tc.beta,
            tc.margin,
            tc.lam,
            preserve_loss=tc.preserve_loss,
            erase_contrast=tc.erase_contrast,
            guidance_enhance=tc.guidance_enhance,
        )

    def _mean_over_workers(self, values: list[float]) -> list[float]:
        x = torch.tensor(values, dtype=torch.float64)
        if self.distributed and self.world > 1:
            torch.distributed.all_reduce(x)
            x /= self.world
        return x.tolist()

    def run(self) -> None:
        from tqdm.auto import tqdm

        self._wrap(self._load())
        start, metrics = self._restore()
        self.last_checkpoint = start if start else None
        plan, acc, every = self.job.plan, self.t.grad_accum, self.t.checkpoint_every
        draws = self._draws()
        ds = self.t.backend == "deepspeed"
        bar = tqdm(
            total=plan.steps,
            initial=start,
            desc="stage 2",
            unit="step",
            disable=self.rank != 0 or not self.job.progress,
        )
        for step in range(start, plan.steps):
            t0 = time.perf_counter()
            sums = np.zeros(3)
            for micro in range(acc):
                loss = self._micro_loss(draws[step * acc + micro][2])
                values = self._mean_over_workers([loss.total.item(), loss.erase.item(), loss.preserve.item()])
                if not np.isfinite(values[0]):
                    raise NonFiniteLoss(
                        f"the stage-2 loss is {values[0]} at step {step + 1} (erase {values[1]:.4g}, preserve "
                        f"{values[2]:.4g}); stopped before the update, the last good checkpoint is step "
                        f"{self.last_checkpoint}: lower train.lr or check the trajectory cache"
                    )
                sums += values
                if ds:
                    self.model.backward(loss.total)
                    self.model.step()  # DeepSpeed updates (and zeroes grads) at the accumulation boundary
                else:
                    sync = micro == acc - 1 or not hasattr(self.model, "no_sync")
                    with contextlib.nullcontext() if sync else self.model.no_sync():
                        (loss.total / acc).backward()
            if not ds:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)  # every step (the authors' script never zeroed them)
            total, erase, preserve = (sums / acc).tolist()
            metrics.append(
                {
                    "step": step + 1,
                    "loss": total,
                    "erase": erase,
                    "preserve": preserve,
                    "seconds": round(time.perf_counter() - t0, 4),
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4g}")
            final = step + 1 == plan.steps
            if final or (step + 1) % every == 0:
                self._report(step + 1, metrics, final)
            self.after_step(step + 1)
        bar.close()

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (and its checkpoint, if any); a hook for tests' fault drills."""
