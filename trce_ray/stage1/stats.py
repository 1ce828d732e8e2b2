"""Stage-1 preservation statistics computed once: the Gram sum S_kk per text stream, stored content-addressed.

S_kk = sum_j e_k,j e_k,j^T depends only on the text encoder, the preservation prompts and which token positions are
summed (stage1.preserve_tokens, which the convention picks by default), never on the concepts erased or on eta: the
convention scales it later (closed_form.scaled_terms). So it is computed once and reused across concepts, runs and
sweeps, like the trajectory cache (stage2/cache.py):

    <cache.root>/stage1-stats/<hash>/spec.json        what was hashed (model fingerprint, dtype, stream, token mode,
                                                      sha256 of the prompt list)
                                     gram.safetensors  S_kk in float64, the row count in its metadata
                                     manifest.json     written last: complete; the sha256 of gram.safetensors

An entry whose gram file does not match its manifest is computed again. One process computes an entry at a time (a
lock beside its folder; a second one waits, then reuses it). The sum is streamed batch by batch, never holding more
than one batch of embeddings. `last_used` is touched on every use, for `trce-ray cache ls`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..artifacts import sha256_file, write_json
from ..locks import hold
from ..models.base import DiffusionAdapter
from .embeddings import preserve_gram

FORMAT = "trce-ray-stage1-stats/1"
FOLDER = "stage1-stats"
LAST_USED = "last_used"


def prompts_digest(prompts: list[str]) -> str:
    """sha256 of the prompt list, order and count included."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()


@dataclass
class StatsStore:
    """Where preservation statistics of one model live, and what this process did with them."""

    root: Path  # <cache.root>/stage1-stats
    model: str  # model_fingerprint of the model
    model_dtype: str
    model_path: str = ""  # for `cache ls` only, not hashed
    hits: int = 0  # entries reused by this process
    misses: int = 0  # entries computed by this process
    used: list[str] = field(default_factory=list)  # entry folders used, in order

    def spec(self, adapter: DiffusionAdapter, prompts: list[str], mode: str, stream: int) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "model_dtype": self.model_dtype,
            "stream": adapter.stream_names[stream],
            "preserve_tokens": mode,
            "n_prompts": len(prompts),
            "prompts_sha256": prompts_digest(prompts),
        }

    def folder(self, spec: dict) -> Path:
        return self.root / hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]

    def preserve_gram(
        self,
        adapter: DiffusionAdapter,
        prompts: list[str],
        mode: str,
        stream: int = 0,
        batch_size: int = 64,
        progress: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """(S_kk, row count) of `stream`, from the store when a complete entry exists, else computed and stored."""
        spec = self.spec(adapter, prompts, mode, stream)
        path = self.folder(spec)
        self.used.append(str(path))
        found = _read(path)
        if found is None:
            with hold(path, "stage-1 statistics", wait=True):
                found = _read(path)  # another process may have written it while we waited
                if found is None:
                    gram, count = preserve_gram(adapter, prompts, mode, stream, batch_size, progress)
                    _write(path, spec, gram, count, self.model_path)
                    self.misses += 1
                    return _read(path)  # exactly what a later run will load
        self.hits += 1
        return found


def stats_store(root: str | Path, model: str, model_dtype: str, model_path: str = "") -> StatsStore:
    return StatsStore(Path(root).expanduser().resolve() / FOLDER, model, model_dtype, model_path)


def _read(path: Path) -> tuple[torch.Tensor, int] | None:
    """A complete entry's (S_kk, rows), or None when absent, partial or damaged."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if sha256_file(path / "gram.safetensors") != manifest["sha256"]:
            return None
        gram = load_file(str(path / "gram.safetensors"))["gram"].clone()  # not a view of a file that may change
    except (OSError, ValueError, KeyError):
        return None
    (path / LAST_USED).touch()
    return gram, int(manifest["rows"])


def _write(path: Path, spec: dict, gram: torch.Tensor, count: int, model_path: str) -> None:
    """Write the entry into a sibling folder and rename it into place (the caller holds the entry's lock)."""
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        write_json(tmp / "spec.json", spec)
        save_file({"gram": gram.double().contiguous()}, str(tmp / "gram.safetensors"))
        manifest = {
            "format": FORMAT,
            "rows": count,
            "sha256": sha256_file(tmp / "gram.safetensors"),
            "model_path": model_path,
            "created": time.time(),
        }
        write_json(tmp / "manifest.json", manifest)
        if path.exists():
            shutil.rmtree(path)  # a damaged entry (we hold its lock)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_stats(cache_root: str | Path) -> list:
    """Every statistics entry under `cache_root`/stage1-stats as `CacheEntry` rows (what `trce-ray cache ls` and
    `prune` handle), least recently used first."""
    from ..stage2.cache import folder_entry

    root = Path(cache_root).expanduser().resolve() / FOLDER
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / "spec.json").is_file()):
        spec = json.loads((d / "spec.json").read_text())
        what = f"{spec['n_prompts']} prompts, {spec['stream']}, {spec['preserve_tokens']} tokens"
        out.append(folder_entry(d, f"stage-1 statistics: {what}"))
    return sorted(out, key=lambda e: e.last_used)
