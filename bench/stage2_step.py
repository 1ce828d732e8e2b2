"""Stage-2 training step: ours (cached targets, one denoiser) against steps that compute targets on the fly.

Three steps on the same UNet, same draws, same process, interleaved so machine load hits all alike:
  ours     - cached eps(z, empty / c_m / c_s) and eps(z_u, empty); ONE batched forward of the trained UNet (2 + R rows)
             (ours+ckpt: the same with train.gradient_checkpointing)
  paper    - the authors' step structure (run_trce_stage2.py) with their bugs fixed: encode the 3 prompts, 3 reference
             calls at z_m, 2 trained calls, then per preservation draw 1 reference + 1 trained call
  batched  - a second (original) UNet computes the targets in one batched no-grad call (3 + R rows), then our forward
Reports denoiser rows per erase draw (forward hooks), median step time, and peak memory (max_memory_allocated on
CUDA; on CPU a dispatch-mode tracker of live tensor storages), each as a ratio to the baselines.

    OMP_NUM_THREADS=1 python bench/stage2_step.py                  # tiny UNet (16x16 latents) and an SD-1.x layout
    OMP_NUM_THREADS=1 python bench/stage2_step.py --sizes tiny --repeats 40 --preserve 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trce_ray.config import TrainConfig
from trce_ray.models import adapter_for
from trce_ray.models.base import Conditioning
from trce_ray.models.tiny import tiny_sd_pipeline
from trce_ray.stage2.loss import cached_draws_loss, stage2_loss
from trce_ray.stage2.params import select_trainable

PROMPT_M, PROMPT_S = "a photo of a nude woman on a beach", "a photo of a clothed woman on a beach"


def build(size: str, seed: int = 0):
    pipe = tiny_sd_pipeline(seed)
    if size == "sd-layout":
        torch.manual_seed(seed)
        pipe.unet = _sd_layout_unet()
    return pipe


def _sd_layout_unet():
    """SD-1.x block structure (3 cross-attention levels + 1 plain, 2 layers each) at 1/5 of its width."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(64, 128, 256, 256),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages while active (what CUDA's max_memory_allocated reports, for any device),
    counting the tensors of the given modules and optimizers as already resident."""

    def __init__(self, *holders):
        super().__init__()
        self.live: dict[int, tuple[int, weakref.ref]] = {}
        self.current = self.peak = 0
        for h in holders:
            if isinstance(h, torch.nn.Module):
                tensors = [*h.parameters(), *h.buffers()]
            else:
                tensors = [v for s in h.state.values() for v in s.values() if torch.is_tensor(v)]
                tensors += [p.grad for g in h.param_groups for p in g["params"] if p.grad is not None]
            for t in tensors:
                self._add(t)

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.live:
            self.live[key] = (storage.nbytes(), weakref.ref(storage, lambda _, k=key: self._free(k)))
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, (0, None))[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out


class RowCounter:
    """Counts batch rows entering each hooked denoiser."""

    def __init__(self, *modules):
        self.rows = 0
        for m in modules:
            m.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.rows += (args[0] if args else kwargs["sample"]).shape[0]


class Bench:
    def __init__(self, size: str, batch: int, preserve: int, device: str):
        self.device = torch.device(device)
        self.pipe = build(size).to(self.device)
        self.adapter = adapter_for(self.pipe)
        self.ref = copy.deepcopy(self.adapter.denoiser).requires_grad_(False)  # the original model
        self.t = TrainConfig(lr=1e-5)
        self.start = {k: v.clone() for k, v in self.adapter.denoiser.state_dict().items()}
        names = set(select_trainable(self.adapter, self.t))
        params = [p for n, p in self.adapter.denoiser.named_parameters() if n in names]
        self.opt = torch.optim.Adam(params, lr=self.t.lr)
        g = torch.Generator().manual_seed(1)
        shape = self.adapter.latent_shape()
        self.z_m = torch.randn((batch, *shape), generator=g).to(self.device)
        self.z_u = torch.randn((batch * preserve, *shape), generator=g).to(self.device)
        self.t_m = torch.randint(500, 1000, (batch,), generator=g).to(self.device)
        self.t_u = torch.randint(0, 1000, (batch * preserve,), generator=g).to(self.device)
        with torch.no_grad():
            conds = self.adapter.condition([PROMPT_M, PROMPT_S, ""])
        self.c_m, self.c_s, self.empty = conds[[0] * batch], conds[[1] * batch], conds[[2]]
        self.cached = self._targets_batched()  # what the cache would hold (same values as the reference computes)
        self.counter = RowCounter(self.adapter.denoiser, self.ref)

    def _targets_batched(self):
        b, r = len(self.z_m), len(self.z_u)
        cond = Conditioning.cat([self.c_m, self.c_s, self.empty[[0] * (b + r)]])
        z = torch.cat([self.z_m, self.z_m, self.z_m, self.z_u])
        t = torch.cat([self.t_m, self.t_m, self.t_m, self.t_u])
        with torch.no_grad():
            out = self.ref(z, t, encoder_hidden_states=cond.hidden).sample
        m = {
            "z": self.z_m,
            "t": self.t_m,
            "eps_cond": out[:b],
            "eps_safe": out[b : 2 * b],
            "eps_uncond": out[2 * b : 3 * b],
        }
        return m, {"z": self.z_u, "t": self.t_u, "eps_uncond": out[3 * b :]}

    def _update(self, loss):
        loss.total.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def ours(self):
        m, u = self.cached
        self._update(
            cached_draws_loss(self.adapter, self.c_m, self.empty, m, u, self.t.beta, self.t.margin, self.t.lam)
        )

    def ours_checkpointed(self):
        self.adapter.denoiser.enable_gradient_checkpointing()
        try:
            self.ours()
        finally:
            self.adapter.denoiser.disable_gradient_checkpointing()

    def batched(self):
        self.cached = self._targets_batched()
        self.ours()

    def paper(self):
        ft, ref, t = self.adapter.denoiser, self.ref, self.t
        with torch.no_grad():  # the authors re-encode the prompts at every step
            c_m, c_s, e = (self.adapter.condition([p]).hidden for p in (PROMPT_M, PROMPT_S, ""))
        preds, refs = {"c": [], "u": [], "p": []}, {"m": [], "s": [], "u": [], "p": []}
        for i in range(len(self.z_m)):
            z, tt = self.z_m[i : i + 1], self.t_m[i : i + 1]
            with torch.no_grad():
                refs["m"].append(ref(z, tt, encoder_hidden_states=c_m).sample)
                refs["s"].append(ref(z, tt, encoder_hidden_states=c_s).sample)
                refs["u"].append(ref(z, tt, encoder_hidden_states=e).sample)
            preds["c"].append(ft(z, tt, encoder_hidden_states=c_m).sample)
            preds["u"].append(ft(z, tt, encoder_hidden_states=e).sample)
        for i in range(len(self.z_u)):
            z, tt = self.z_u[i : i + 1], self.t_u[i : i + 1]
            with torch.no_grad():
                refs["p"].append(ref(z, tt, encoder_hidden_states=e).sample)
            preds["p"].append(ft(z, tt, encoder_hidden_states=e).sample)
        cat = {k: torch.cat(v) for k, v in {**preds, **{"r" + k: v for k, v in refs.items()}}.items()}
        self._update(
            stage2_loss(
                cat["c"],
                cat["u"],
                cat["p"],
                {"eps_uncond": cat["ru"], "eps_cond": cat["rm"], "eps_safe": cat["rs"]},
                {"eps_uncond": cat["rp"]},
                t.beta,
                t.margin,
                t.lam,
            )
        )

    def rows_per_draw(self, step) -> float:
        self.counter.rows = 0
        step()
        return self.counter.rows / len(self.z_m)

    def peak_bytes(self, step, modules) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        with PeakMemory(*modules, self.opt) as tracker:
            step()
        return tracker.peak


def run(size: str, repeats: int, batch: int, preserve: int, device: str) -> dict:
    b = Bench(size, batch, preserve, device)
    steps = {"ours": b.ours, "ours+ckpt": b.ours_checkpointed, "paper": b.paper, "batched": b.batched}
    for step in steps.values():  # warm-up (allocator, kernels) and the optimizer state
        step()
    rows = {k: b.rows_per_draw(s) for k, s in steps.items()}
    text = b.pipe.text_encoder
    peak = {
        "ours": b.peak_bytes(b.ours, [b.adapter.denoiser]),
        "ours+ckpt": b.peak_bytes(b.ours_checkpointed, [b.adapter.denoiser]),
        "batched": b.peak_bytes(b.batched, [b.adapter.denoiser, b.ref]),
        "paper": b.peak_bytes(b.paper, [b.adapter.denoiser, b.ref, text]),
    }
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            if b.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if b.device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    params = sum(p.numel() for p in b.ref.parameters())
    return {
        "size": size,
        "params": params,
        "latent": b.adapter.latent_shape(),
        "rows": rows,
        "ms": med,
        "peak_mib": {k: v / 2**20 for k, v in peak.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "sd-layout"], choices=["tiny", "sd-layout"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1, help="erase draws per step (the authors' recipe: 1)")
    ap.add_argument("--preserve", type=int, default=1, help="preservation draws per erase draw (authors: 4)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    print(
        f"device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, preserve R={args.preserve}, "
        f"{args.repeats} interleaved repeats (median)"
    )
    print("| UNet | params | latent | step | denoiser rows / erase draw | step time (ms) | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = run(size, args.repeats, args.batch, args.preserve, args.device)
        for k in ("ours", "ours+ckpt", "paper", "batched"):
            print(
                f"| {size} | {r['params'] / 1e6:.1f}M | {'x'.join(map(str, r['latent']))} | {k} | {r['rows'][k]:g} "
                f"| {r['ms'][k] * 1e3:.1f} | {r['peak_mib'][k]:.1f} |"
            )
        for ours, base in (("ours", "paper"), ("ours", "batched"), ("ours+ckpt", "paper"), ("ours+ckpt", "batched")):
            print(
                f"  {size}: {ours} / {base}: time {r['ms'][ours] / r['ms'][base]:.2f}x, "
                f"peak memory {r['peak_mib'][ours] / r['peak_mib'][base]:.2f}x, "
                f"rows {r['rows'][ours] / r['rows'][base]:.2f}x"
            )


if __name__ == "__main__":
    main()
