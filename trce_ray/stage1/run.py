"""The stage-1 run: config -> prompts -> embeddings -> closed-form edit -> `stage1.safetensors`."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts import apply_delta, atomic_dir, check_output, save_delta, write_json
from ..concepts import PromptPair
from ..config import Stage1Config, TRCEConfig
from ..errors import TRCEError, TRCEWarning
from ..locks import hold
from ..models import adapter_for
from ..models.base import DiffusionAdapter
from ..models.loading import load_model, model_fingerprint
from ..models.tokens import role_notes, token_count
from .closed_form import diagnostics, edited_weights, solve_map, stream_statistics
from .embeddings import check_key_roles, erase_embeddings, preserve_gram, resolve_roles
from .prompts import ConceptPrompts, stage1_prompt_sets
from .stats import StatsStore, stats_store

STAGE1_FILE = "stage1.safetensors"
# preserve_drift is the RMS change of K/V outputs on the preservation prompts relative to the outputs themselves (a
# property of the weights, whatever the convention); at 1 the change is as large as what it changes. Measured on the
# toy world (bench/toy_eta.py, red, normalised convention): eta 0.01 -> drift 0.39, preserve 81% and agreement 79%;
# eta 1e-3 -> 0.69, 64%, 48%; eta 1e-4 -> 1.4, 38%, 19%; eta 1e-30 -> 3.6, 24%, 2% (original: 98%, 95%).
DESTROYED_DRIFT = 1.0


def stage1_inputs(s1: Stage1Config) -> tuple[list[ConceptPrompts], list[PromptPair], list[str]]:
    """The concepts, their erase/target pairs stacked in order, and the preservation prompts, read and checked
    before any model work."""
    concepts, keep = stage1_prompt_sets(s1)
    pairs = [p for c in concepts for p in c.pairs]
    if any(role.rpartition(":")[2] == "key" for role in s1.tokens or []):
        unmarked = [i for i, p in enumerate(pairs) if p.erase_key is None]
        if unmarked:
            raise TRCEError(
                f"token role 'key' needs the keyword marked: erase prompt {unmarked[0] + 1} "
                f"({pairs[unmarked[0]].erase!r}) has no [bracketed] span"
            )
    return concepts, pairs, keep


def stage1_prompts(s1: Stage1Config) -> tuple[list[PromptPair], list[str]]:
    """The erase/target pairs (every concept's, stacked) and the preservation prompts."""
    _, pairs, keep = stage1_inputs(s1)
    return pairs, keep


def warn_long_prompts(tokenizer, pairs: list[PromptPair], keep: list[str]) -> None:
    """Say once how many prompts the (first CLIP) text encoder cuts at its token limit: their ends are not edited."""
    limit = tokenizer.model_max_length
    named = [("erase", p.erase) for p in pairs] + [("target", p.target) for p in pairs]
    named += [("preserve", k) for k in keep]
    counts = token_count(tokenizer, [text for _, text in named])
    long = [(role, text, n) for (role, text), n in zip(named, counts) if n > limit]
    if long:
        role, text, n = long[0]
        warnings.warn(
            f"{len(long)} of {len(named)} prompts are longer than the text encoder's {limit} tokens and are cut "
            f"there (first: {role} prompt {text[:40]!r}..., {n} tokens); their ends do not enter the edit",
            TRCEWarning,
            stacklevel=2,
        )


@dataclass
class Stage1Result:
    delta: dict[str, torch.Tensor]
    diagnostics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    token_roles: dict[str, list[str]] = field(default_factory=dict)  # the roles used, per token segment
    notes: list[str] = field(default_factory=list)  # what a chosen role means on this model (e.g. eot on T5)
    stats_reused: int = 0  # text streams whose preservation statistics came from the store


def compute_stage1(
    adapter: DiffusionAdapter,
    pairs: list[PromptPair],
    keep: list[str],
    s1: Stage1Config,
    progress: bool = False,
    store: StatsStore | None = None,
) -> Stage1Result:
    """Solve Eq. 5 once per text stream and return the edited weights (the model is left untouched). With `store`,
    the preservation sums come from (or go to) that store instead of being embedded every time.

    Diagnostics are reported for the token stream as `erase_residual` / `preserve_drift`, and for any other edited
    stream with its name as prefix (e.g. `pooled_erase_residual`).
    """
    targets = adapter.edit_targets(pooled=s1.pooled, blocks=s1.blocks)
    roles = resolve_roles(adapter, s1.tokens)
    notes = role_notes(s1.tokens, roles)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    maps, diag, timings = {}, {}, {"embed_s": 0.0, "solve_s": 0.0}
    hits = 0 if store is None else store.hits
    for stream in sorted(set(targets.values())):
        t0 = time.perf_counter()
        e_m, e_s = erase_embeddings(adapter, pairs, roles, stream, s1.batch_size, progress)
        gram_fn = preserve_gram if store is None else store.preserve_gram
        gram_k, q = gram_fn(adapter, keep, s1.preserve_tokens, stream, s1.batch_size, progress)
        t1 = time.perf_counter()
        stats = stream_statistics(e_m, e_s, gram_k, q, len(pairs), len(keep))
        try:
            maps[stream] = solve_map(stats, s1.eta, s1.convention, s1.ridge)
        except TRCEError as err:
            if stream not in adapter.singular_hints:
                raise
            name = adapter.stream_names[stream]
            raise TRCEError(
                f"the {name} stream's stage-1 system is singular: {adapter.singular_hints[stream]}"
            ) from err
        timings["embed_s"] += t1 - t0
        timings["solve_s"] += time.perf_counter() - t1
        diag[stream] = (e_m, e_s, gram_k, q)
    t2 = time.perf_counter()
    delta = edited_weights(adapter, maps, targets)
    timings["solve_s"] += time.perf_counter() - t2
    diagnostic = {}
    for stream, (e_m, e_s, gram_k, q) in diag.items():
        prefix = "" if stream == 0 else f"{adapter.stream_names[stream]}_"
        part = {k: v for k, v in delta.items() if targets[k] == stream}
        diagnostic.update({prefix + k: v for k, v in diagnostics(adapter, part, e_m, e_s, gram_k, q).items()})
    reused = 0 if store is None else store.hits - hits
    return Stage1Result(delta, diagnostic, timings, roles, notes, reused)


def run_stage1(
    cfg: TRCEConfig, output: str | Path, overwrite: bool = False, pipe=None, progress: bool = True
) -> Stage1Result:
    """Write `stage1.safetensors`, the resolved config and the exact prompt lists to `output`, atomically.

    Every input is read and validated before the output folder appears; a failure leaves no folder behind.
    """
    if cfg.stage1 is None:
        raise TRCEError("no stage1 settings: give --concept or --erase-prompts/--target-prompts")
    output = Path(output).expanduser().resolve()
    if pipe is None and on_cluster():
        return run_stage1_task(cfg, output, overwrite, progress)
    with hold(output):
        check_output(output, overwrite)
        return _run_stage1(cfg, output, overwrite, pipe, progress)


def on_cluster() -> bool:
    """True in a driver joined to a Ray cluster (RAY_ADDRESS set, as inside `ray job submit`), not in a Ray task."""
    import os

    if not os.environ.get("RAY_ADDRESS", "").strip():
        return False
    import ray

    return not ray.is_initialized() or ray.get_runtime_context().worker.mode == ray.SCRIPT_MODE


def _stage1_task(cfg: TRCEConfig, output: str, overwrite: bool, progress: bool) -> Stage1Result:
    from ..quiet import quiet_libraries

    quiet_libraries()
    return run_stage1(cfg, output, overwrite=overwrite, progress=progress)  # in a Ray task: runs in place


def run_stage1_task(cfg: TRCEConfig, output: Path, overwrite: bool, progress: bool) -> Stage1Result:
    """Run stage 1 as a Ray task with `stage1.num_gpus` / `num_cpus`, so it lands on a node where the model fits.

    The task gets the one resolved config (absolute paths) and writes `output` itself; errors come back as the
    task's own sentence.
    """
    from ..ray_runtime import ensure_ray

    ray = ensure_ray()
    s1 = cfg.stage1
    task = ray.remote(num_gpus=s1.num_gpus, num_cpus=s1.num_cpus, max_retries=0)(_stage1_task)
    try:
        return ray.get(task.remote(cfg, str(output), overwrite, progress))
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, TRCEError):
            raise err.cause from None
        raise


def _stats_store(cfg: TRCEConfig, fingerprint: str) -> StatsStore | None:
    """The stage-1 statistics store under `cache.root`; none (with a warning) when that root is inside a Ray job's
    temporary folder, where a cache would be deleted with the job and seen by no other node (config/paths.py)."""
    from ..config.paths import inside_job_folder

    if inside_job_folder(cfg.cache.root) and not cfg.allow_job_local_paths:
        warnings.warn(
            f"stage-1 statistics are not cached: cache.root {cfg.cache.root} is inside this Ray job's temporary "
            "folder; set cache.root on storage every node mounts to reuse them across runs",
            TRCEWarning,
            stacklevel=2,
        )
        return None
    return stats_store(cfg.cache.root, fingerprint, cfg.model.dtype, cfg.model.path)


def _run_stage1(cfg: TRCEConfig, output: Path, overwrite: bool, pipe, progress: bool) -> Stage1Result:
    s1 = cfg.stage1
    concepts, pairs, keep = stage1_inputs(s1)
    if pipe is None:
        pipe = load_model(cfg)
    adapter = adapter_for(pipe)
    resolve_roles(adapter, s1.tokens)  # a role this model's text does not have fails before the folder appears
    check_key_roles(adapter, pairs, s1.tokens)
    warn_long_prompts(adapter.tokenizer, pairs, keep)
    fingerprint = model_fingerprint(cfg.model.path)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        store = _stats_store(cfg, fingerprint) if s1.stats_cache else None
        result = compute_stage1(adapter, pairs, keep, s1, progress, store)
        drift = result.diagnostics["preserve_drift"]
        if drift >= DESTROYED_DRIFT:
            warnings.warn(
                f"preserve drift {drift:.3g} >= {DESTROYED_DRIFT:g}: the edit changes what the model makes of the "
                f"prompts to keep by as much as they were; stage1.eta {s1.eta:g} is too small to preserve anything "
                "(raise it)",
                TRCEWarning,
                stacklevel=2,
            )
        meta = {
            "format": "trce-ray-delta",
            "stage": "1",
            "base_model": cfg.model.path,
            "base_fingerprint": fingerprint,
            "eta": str(s1.eta),
            "convention": s1.convention,
        }
        save_delta(tmp / STAGE1_FILE, result.delta, meta)
        (tmp / "config.yaml").write_text(cfg.to_yaml())
        write_json(
            tmp / "prompts.json",
            {
                "erase": [p.erase for p in pairs],
                "target": [p.target for p in pairs],
                "preserve": keep,
                "concepts": [{"name": c.name, "n_erase_prompts": len(c.pairs)} for c in concepts],
                "tokens": result.token_roles,
                "preserve_tokens": s1.preserve_tokens,
                "convention": s1.convention,
            },
        )
        write_json(
            tmp / "stage1_summary.json",
            {
                "n_erase_prompts": len(pairs),
                "n_preserve_prompts": len(keep),
                "concepts": [c.name for c in concepts],
                "preserve_stats": {"reused": result.stats_reused, "entries": store.used if store else []},
                "n_edited_matrices": len(result.delta),
                "model_family": adapter.family,
                "token_roles": result.token_roles,
                "notes": result.notes,
                "base_fingerprint": fingerprint,
                **result.diagnostics,
                **result.timings,
            },
        )
        if s1.save_pipeline:
            apply_delta(adapter.denoiser, result.delta)
            pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
    return result
