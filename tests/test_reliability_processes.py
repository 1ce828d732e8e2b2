"""Issue 16 with real processes: concurrent runs on one output or cache, SIGINT/SIGTERM, Ray's binding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .test_stage2_units import stage2_config

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("RAY_ADDRESS", None)


class Command:
    """`trce-ray ARGV` in a new process, through `python -c` so a test can inject a prelude (e.g. a slow step).

    Output goes to files in `logs` (a pipe nobody reads would fill up and stall a chatty Ray run).
    """

    def __init__(self, *argv, cwd: Path, logs: Path, prelude: str = ""):
        code = f"{prelude}\nimport sys\nfrom trce_ray.cli import main\nsys.exit(main({list(map(str, argv))!r}))"
        logs.mkdir(exist_ok=True)
        n = len(list(logs.glob("*.err")))
        self.out_file, self.err_file = logs / f"{n}.out", logs / f"{n}.err"
        with open(self.out_file, "w") as out, open(self.err_file, "w") as err:
            self.proc = subprocess.Popen([PYTHON, "-c", code], cwd=cwd, env=ENV, stdout=out, stderr=err)
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once it ends."""
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.out_file.read_text(), self.err_file.read_text()

    def stop(self, sig: int, within: float) -> tuple[int, str]:
        """Signal it; it must end within `within` s (the CLI's watchdog ends it 20 s after a signal at most)."""
        self.proc.send_signal(sig)
        try:
            rc, _, err = self.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running {within} s after {signal.Signals(sig).name}") from None
        return rc, err


def _wait_for(predicate, timeout: float, what: str, cmd: Command) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not cmd.running():
            raise AssertionError(f"ended (rc {cmd.proc.returncode}) before {what}: {cmd.err_file.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


SLOW_SOLVE = """
import time
import trce_ray.stage1.run as stage1_run
_solve = stage1_run.compute_stage1
def _slow(*a, **k):
    time.sleep(60)
    return _solve(*a, **k)
stage1_run.compute_stage1 = _slow
"""


def test_second_run_to_an_output_fails_at_once_and_sigterm_leaves_nothing(tiny_sd_dir, tmp_path):
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    argv = ["erase", "--model", tiny_sd_dir, "--concept", "sexual", "--templates", "2", "--no-tracking"]
    first = Command(*argv, "--output", "run", cwd=work, logs=logs, prelude=SLOW_SOLVE)
    _wait_for(lambda: (work / ".run.lock").is_file(), 600, "the first run's lock", first)
    rc, _, err = Command(*argv, "--output", "run", cwd=work, logs=logs).wait(600)
    assert rc == 2
    assert f"is in use by another trce-ray run (pid {first.pid} on " in err and len(err.strip().splitlines()) == 1

    rc, err = first.stop(signal.SIGTERM, within=60)
    assert rc == 143, err
    assert err.strip().splitlines()[-1] == (
        "trce-ray erase: stopped by SIGTERM; no output was written, rerun the command to start again"
    )
    assert "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == []  # no output, no .run.partial-*, lock released


SLOW_TRAINING = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.stage2_drills import GatedShardWorker, slow_loop
import trce_ray.stage2.run, trce_ray.workflow
_run_stage2, _build_cache = trce_ray.stage2.run.run_stage2, trce_ray.stage2.run.build_cache
trce_ray.workflow.run_stage2 = lambda *a, **k: _run_stage2(*a, **k, train_loop=slow_loop)
trce_ray.stage2.run.build_cache = lambda *a, **k: _build_cache(*a, **k, worker_cls=GatedShardWorker)
"""


def test_sigint_in_stage2_keeps_cache_and_checkpoints_and_a_second_cache_writer_waits(tiny_sd_dir, tmp_path):
    cfg = stage2_config(tmp_path, tiny_sd_dir, **{"train.num_workers": 1, "train.checkpoint_every": 1})
    config = tmp_path / "stage2.yaml"
    data = cfg.model_dump(mode="json")
    data["tracking"]["enabled"] = False
    config.write_text(yaml.safe_dump(data))
    cache_root = Path(cfg.cache.root)
    erase = ["erase", "--config", config, "--stages", "text,visual"]
    logs = tmp_path / "logs"
    run = Command(*erase, "--output", "tv", cwd=tmp_path, logs=logs, prelude=SLOW_TRAINING)  # 5 s a step
    _wait_for(lambda: cache_root.is_dir() and any(cache_root.glob(".*.lock")), 600, "the cache build", run)

    # the same cache from another process waits for it instead of sampling it too; the same output fails at once
    writer = Command("cache", "--config", config, cwd=tmp_path, logs=logs)
    rc, _, err = Command(*erase, "--output", "tv", cwd=tmp_path, logs=logs).wait(600)
    assert rc == 2 and f"is in use by another trce-ray run (pid {run.pid} on " in err
    _wait_for(lambda: "waiting for pid" in writer.err_file.read_text(), 600, "the cache writer to wait", writer)
    (tmp_path / "go").touch()  # the gated shards of the first run may be sampled now
    rc, out, err = writer.wait(600)
    assert rc == 0, err
    assert f"waiting for pid {run.pid} on " in err and "reused (complete)" in out

    checkpoints = tmp_path / ".tv.work" / "train"
    _wait_for(lambda: any(checkpoints.glob("stage2-*/checkpoint_*")), 600, "a stage-2 checkpoint", run)
    rc, err = run.stop(signal.SIGINT, within=60)
    assert rc == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("trce-ray erase: stopped by SIGINT; kept the stage-1 edit in ")
    assert "the finished shards of the trajectory cache in " in last and "the stage-2 checkpoints in " in last
    assert last.endswith("rerun the same command to resume")
    assert "core dumped" not in err and "*** SIG" not in err
    assert not (tmp_path / "tv").exists() and not list(tmp_path.glob(".tv.partial-*"))
    assert (tmp_path / ".tv.work" / "stage1" / "stage1.safetensors").is_file()
    assert len(list(cache_root.glob("*/shards/*.parquet"))) > 0


BINDING = """
import json, os, sys, time
import psutil
from trce_ray.ray_runtime import ensure_ray
ray = ensure_ray(num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
me = psutil.Process()
listening = []
for p in [me, *me.children(recursive=True)]:
    try:
        listening += [(p.name(), c.laddr.ip) for c in p.net_connections(kind="inet") if c.status == "LISTEN"]
    except psutil.Error:
        pass
gcs = ray.get_runtime_context().gcs_address
print(json.dumps({"listening": listening, "gcs": gcs, "temp": ray._private.worker._global_node.get_temp_dir_path()}))
"""


def test_local_ray_is_private_and_listens_on_loopback_only(tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="trce-t-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # a leftover of a cluster long gone
        env = {**ENV, "TMPDIR": str(tmp)}
        proc = subprocess.run([PYTHON, "-c", BINDING], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["gcs"].startswith("127.0.0.1:") and got["gcs"] != "127.0.0.1:1"
        names = {name for name, _ in got["listening"]}
        assert {"gcs_server", "raylet"} <= names and len(got["listening"]) >= 4
        assert {ip for _, ip in got["listening"]} <= {"127.0.0.1", "::ffff:127.0.0.1"}, got["listening"]
        assert got["temp"].startswith(str(tmp)) and not Path(got["temp"]).exists()  # private, removed at exit
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def test_with_ray_address_a_command_joins_that_cluster(ray_cluster):
    """Inside `ray job submit`, RAY_ADDRESS names the job's cluster: ensure_ray joins it instead of starting one."""
    address = ray_cluster.get_runtime_context().gcs_address
    code = "from trce_ray.ray_runtime import ensure_ray; print(ensure_ray().get_runtime_context().gcs_address)"
    env = {**ENV, "RAY_ADDRESS": address}
    proc = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == address
