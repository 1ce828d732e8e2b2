"""Stage-1 preservation statistics computed once: a second run with the same preservation set embeds none of its
prompts and writes bitwise-identical weights; the key follows the prompts, the model and the token mode; a damaged
entry is computed again; `trce-ray cache ls` lists the entries."""

import json

import pytest
from safetensors.torch import load_file

from trce_ray.cli import main
from trce_ray.models import adapter_for
from trce_ray.models.loading import model_fingerprint
from trce_ray.models.tiny import tiny_sd_pipeline
from trce_ray.stage1.stats import list_stats, stats_store

KEEP = [f"a {c} {o}" for c in ("red", "small", "wooden", "old") for o in ("dog", "car", "house", "boat", "cup")]


@pytest.fixture
def encoder_calls(tiny_sd_dir, monkeypatch):
    """Every prompt list the tiny model's text encoder is asked to embed, by any adapter of its class."""
    from trce_ray.models import load_pipeline

    cls = type(adapter_for(load_pipeline(str(tiny_sd_dir))))
    calls = []
    original = cls.encode_text

    def counted(self, prompts, *args, **kw):
        calls.append(list(prompts))
        return original(self, prompts, *args, **kw)

    monkeypatch.setattr(cls, "encode_text", counted)
    return calls


def _erase(model, out, cache, keep_file, *extra):
    argv = ["erase", "--model", model, "--concept", "sexual", "--templates", "2", "--synonyms", "2", "--no-tracking"]
    argv += ["--preserve-prompts", keep_file, "--set", f"cache.root={cache}", "--output", out, *extra]
    assert main([str(a) for a in argv]) == 0
    return load_file(out / "stage1.safetensors")


def test_second_run_embeds_no_preservation_prompt_and_gives_identical_weights(tiny_sd_dir, tmp_path, encoder_calls):
    keep_file = tmp_path / "keep.txt"
    keep_file.write_text("\n".join(KEEP) + "\n")
    cache = tmp_path / "cache"
    first = _erase(tiny_sd_dir, tmp_path / "a", cache, keep_file)
    preserved = [c for c in encoder_calls if set(c) <= set(KEEP)]
    assert sum(map(len, preserved)) >= len(KEEP)  # the first run embedded them
    encoder_calls.clear()
    second = _erase(tiny_sd_dir, tmp_path / "b", cache, keep_file, "--eta", "0.02")  # another edit, same statistics
    assert encoder_calls and not [c for c in encoder_calls if set(c) & set(KEEP)]
    summary = json.loads((tmp_path / "b" / "stage1_summary.json").read_text())
    assert summary["preserve_stats"]["reused"] == 1
    third = _erase(tiny_sd_dir, tmp_path / "c", cache, keep_file)  # the first run's settings again
    assert set(third) == set(first) and all(third[k].equal(first[k]) for k in first)
    assert any(not second[k].equal(first[k]) for k in first)
    # without the store: the same weights, bit for bit
    fresh = _erase(tiny_sd_dir, tmp_path / "d", tmp_path / "nocache", keep_file, "--set", "stage1.stats_cache=false")
    assert all(fresh[k].equal(first[k]) for k in first) and not (tmp_path / "nocache").exists()
    entries = list_stats(cache)
    assert len(entries) == 1 and entries[0].complete and "20 prompts" in entries[0].settings


def test_key_follows_prompts_model_and_token_mode(tiny_sd_dir, tmp_path):
    pipe = tiny_sd_pipeline(seed=1)
    pipe.save_pretrained(tmp_path / "other")
    adapter = adapter_for(pipe)
    store = stats_store(tmp_path, model_fingerprint(str(tiny_sd_dir)), "float32")
    other = stats_store(tmp_path, model_fingerprint(str(tmp_path / "other")), "float32")
    base = store.folder(store.spec(adapter, KEEP, "all", 0))
    assert base == stats_store(tmp_path, store.model, "float32").folder(store.spec(adapter, list(KEEP), "all", 0))
    changed = [
        store.folder(store.spec(adapter, KEEP[:-1], "all", 0)),  # one prompt fewer
        store.folder(store.spec(adapter, KEEP[::-1], "all", 0)),  # the key is of the list as given, order included
        store.folder(store.spec(adapter, KEEP[:-1] + ["a blue cup"], "all", 0)),
        store.folder(store.spec(adapter, KEEP, "eot", 0)),
        other.folder(other.spec(adapter, KEEP, "all", 0)),
        store.folder(stats_store(tmp_path, store.model, "float16").spec(adapter, KEEP, "all", 0)),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_damaged_entry_is_computed_again(tiny_pipe, tmp_path):
    adapter = adapter_for(tiny_pipe)
    store = stats_store(tmp_path, "model-a", "float32")
    gram, rows = store.preserve_gram(adapter, KEEP, "all")
    assert (store.misses, store.hits, rows) == (1, 0, len(KEEP) * 77)
    again, _ = store.preserve_gram(adapter, KEEP, "all")
    assert store.hits == 1 and again.equal(gram)
    folder = store.folder(store.spec(adapter, KEEP, "all", 0))
    raw = bytearray((folder / "gram.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "gram.safetensors").write_bytes(bytes(raw))
    fixed, _ = store.preserve_gram(adapter, KEEP, "all")
    assert store.misses == 2 and fixed.equal(gram)


def test_cache_ls_and_prune_handle_statistics_beside_trajectory_caches(tiny_pipe, tmp_path, capsys):
    stats_store(tmp_path, "model-a", "float32", "tiny").preserve_gram(adapter_for(tiny_pipe), KEEP, "eot")
    traj = tmp_path / "0123456789abcdef0123"
    traj.mkdir()
    spec = {"trajectories": [{}, {}], "steps": 20, "guidance": 5.0, "store_dtype": "float16"}
    (traj / "spec.json").write_text(json.dumps(spec))
    (traj / "manifest.json").write_text(json.dumps({"model_path": "toy"}))
    assert main(["cache", "ls", "--cache-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stage-1 statistics: 20 prompts, clip, eot tokens" in out and "tiny" in out
    assert "2 trajectories, 20 steps, guidance 5, float16" in out and "2 caches" in out
    assert main(["cache", "prune", "--cache-root", str(tmp_path), "--max-size", "0"]) == 0
    assert "deleted 2 caches" in capsys.readouterr().out
    assert not traj.exists() and not list_stats(tmp_path)


def test_no_statistics_cache_inside_a_ray_jobs_temporary_folder(tmp_path, monkeypatch):
    """A relative cache.root inside a `ray job submit` working dir would vanish with the job: stage 1 runs uncached."""
    from trce_ray.config import load_config
    from trce_ray.errors import TRCEWarning
    from trce_ray.stage1.run import _stats_store

    job = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job.mkdir(parents=True)
    monkeypatch.chdir(job)
    cfg = load_config(overrides={"model.path": "toy", "cache.root": str(job / "trce-cache")})
    with pytest.warns(TRCEWarning, match="not cached: cache.root .* inside this Ray job's temporary folder"):
        assert _stats_store(cfg, "fp") is None
    monkeypatch.chdir(tmp_path)  # a Tune trial runs in its own folder, with cache.root resolved in the job's
    with pytest.warns(TRCEWarning, match="not cached"):
        assert _stats_store(cfg, "fp") is None
    shared = load_config(overrides={"model.path": "toy", "cache.root": str(tmp_path / "shared")})
    assert _stats_store(shared, "fp") is not None
    allowed = load_config(
        overrides={"model.path": "toy", "cache.root": str(job / "trce-cache"), "allow_job_local_paths": True}
    )
    assert _stats_store(allowed, "fp") is not None
