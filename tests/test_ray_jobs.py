"""The cluster path for real (issue 11): `ray job submit --working-dir` to a local head with token auth, an MLflow
server the jobs log to, outputs and caches on a shared folder, then a second node that Ray Data work reaches.

One module fixture starts, with free ports, the dashboard and MLflow on 127.0.0.1 (Ray's nodes take the host's address,
which `ray start` needs for a second node) and a private temp folder:
- an `mlflow server` (sqlite store and artifacts under the shared folder), in its own process group;
- `ray start --head --block` with token auth on (a generated token in a file, RAY_AUTH_TOKEN_PATH).
Everything is stopped by process group and PID at the end (never `ray stop`): the groups of the processes this test
started, then any process left whose command line names this test's private Ray temp folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .test_manifests import _stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.timeout(1800)]  # ~3 min on a quiet 2-core machine
JOB_TIMEOUT = 900

DATA_JOB = """
import json, sys, time
from trce_ray.ray_runtime import ensure_ray
ray = ensure_ray()
deadline = time.time() + 300  # a loaded CI box can take minutes to start a node
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:
    time.sleep(1)
def where(batch):
    time.sleep(0.3)
    return {"id": batch["id"], "node": [ray.get_runtime_context().get_node_id()] * len(batch["id"])}
rows = ray.data.range(16, override_num_blocks=16).map_batches(where, batch_size=None, num_cpus=1).take_all()
alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
json.dump({"alive": alive, "used": sorted({r["node"] for r in rows}), "ids": sorted(r["id"] for r in rows)},
          open(sys.argv[1], "w"))
"""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_ports(ports: list[int]) -> list[str]:
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    return [f"--{name}={port}" for name, port in zip(names, ports)]


def _naming(text: str) -> list[int]:
    """PIDs of live processes whose command line contains `text` (this test's private temp folder)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this test started (setsid), SIGKILL what is left after 20 s."""
    _stop(proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _wait(check, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    tail = log.read_text()[-3000:] if log and log.is_file() else ""
    raise AssertionError(f"{what} not ready after {timeout:.0f} s\n{tail}")


def _http(port: int, path: str, token: str | None = None) -> tuple[int, dict | None]:
    """(status, JSON body) of a GET to 127.0.0.1:port; (0, None) when nothing answers."""
    import http.client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except OSError:
        return 0, None
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, None


class Cluster:
    def __init__(self, root: Path):
        self.shared = root / "shared"
        self.shared.mkdir()
        # Ray's Unix socket paths must fit in 107 bytes: a short private folder under /tmp
        self.temp = Path(tempfile.mkdtemp(prefix="trj-", dir="/tmp"))
        self.token = self.temp / "auth_token"
        self.token.write_text(secrets.token_hex(32))
        self.procs: list[subprocess.Popen] = []
        self.gcs, self.dash, self.client_port, self.mlflow_port, *self.ports = _free_ports(16)
        self.address = f"http://127.0.0.1:{self.dash}"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        self.env = {
            **env,
            "PATH": f"{BIN}:{env.get('PATH', '')}",  # job entry points run the first python on the head's PATH
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token),
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "TRCE_CACHE_HOME": str(self.shared / "trce-home"),
            "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def spawn(self, argv: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        with open(self.temp / log, "w") as out:
            proc = subprocess.Popen(
                argv,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.temp,
            )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        store = self.shared / "mlflow"
        store.mkdir()
        self.spawn(
            [
                str(BIN / "mlflow"),
                "server",
                f"--backend-store-uri=sqlite:///{store}/mlflow.db",
                "--serve-artifacts",
                f"--artifacts-destination={store}/artifacts",
                "--host=127.0.0.1",
                f"--port={self.mlflow_port}",
                "--workers=1",
            ],
            "mlflow.log",
        )
        self.start_head()  # while the server starts
        _wait(lambda: _http(self.mlflow_port, "/health")[0] == 200, "mlflow server", 180, self.temp / "mlflow.log")

    def start_head(self, attempts: int = 3) -> None:
        """`ray start --head --block`; Ray gives a node 30 s to register, which an overloaded machine can miss:
        a failed start is cleaned up (by PID) and retried."""
        for attempt in range(attempts):
            log = f"head{attempt}.log"
            proc = self.spawn(
                [
                    str(BIN / "ray"),
                    "start",
                    "--head",
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    f"--port={self.gcs}",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dash}",
                    f"--ray-client-server-port={self.client_port}",
                    *_node_ports(self.ports[:6]),
                    "--num-cpus=8",
                    "--object-store-memory=200000000",
                    f"--temp-dir={self.temp}",
                    "--disable-usage-stats",
                ],
                log,
            )
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                if self.api("/api/jobs/")[0] == 200:
                    return
                time.sleep(1)
            _stop_group(proc)
            self.kill_leftovers()
        raise AssertionError(f"the Ray head did not start {attempts} times\n{(self.temp / log).read_text()[-3000:]}")

    def kill_leftovers(self) -> None:
        """SIGKILL, by PID, any process whose command line names this test's private Ray temp folder."""
        for pid in _naming(str(self.temp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def api(self, path: str) -> tuple[int, dict | None]:
        """The head's job REST API (what `ray job` calls), with the cluster's token."""
        return _http(self.dash, path, self.token.read_text())

    def join_second_node(self) -> None:
        """A worker node on the same machine. `ray start` joins a second node only with clusters on, where Ray swaps
        a node IP of 127.0.0.1 for the host's address: both nodes use it (the dashboard and MLflow stay on
        127.0.0.1); a loopback-only head would be unreachable for the second node."""
        self.spawn(
            [
                str(BIN / "ray"),
                "start",
                "--block",
                f"--address=127.0.0.1:{self.gcs}",
                "--node-ip-address=127.0.0.1",
                *_node_ports(self.ports[6:12]),
                "--num-cpus=2",
                "--object-store-memory=100000000",
                "--disable-usage-stats",
            ],
            "node2.log",
        )

    def ray(
        self, args: list[str], check: bool = True, timeout: float = 120, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(BIN / "ray"), *args],
            env={**self.env, "RAY_ADDRESS": self.address, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.temp,
        )
        if check:
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc

    def submit(self, jobs: dict[str, list[str]], working_dir: bool = True) -> None:
        """`ray job submit --no-wait` of every job at once (each CLI zips and hashes the working dir)."""
        runtime = {"env_vars": {"MLFLOW_TRACKING_URI": self.mlflow_uri, "OMP_NUM_THREADS": "1"}}
        head = ["job", "submit", "--no-wait"]
        if working_dir:
            runtime["excludes"] = yaml.safe_load((ROOT / "cluster" / "runtime-env.yaml").read_text())["excludes"]
            head += ["--working-dir", str(ROOT)]
        head += ["--runtime-env-json", json.dumps(runtime)]
        proc_env = {**self.env, "RAY_ADDRESS": self.address}
        procs = {
            name: subprocess.Popen(
                [str(BIN / "ray"), *head, "--submission-id", name, "--", *entry],
                env=proc_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.temp,
            )
            for name, entry in jobs.items()
        }
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=300)
            for _ in range(3):  # an overloaded dashboard can miss the CLI's connection check: submit again
                if proc.returncode == 0 or "Failed to connect to Ray" not in out:
                    break
                time.sleep(5)
                proc = subprocess.run(proc.args, env=proc_env, capture_output=True, text=True, cwd=self.temp)
                out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"submit {name}: {out[-2000:]}"

    def wait_all(self, names: list[str], timeout: float = JOB_TIMEOUT) -> dict[str, str]:
        """Each job's final status, polled over the job REST API (one cheap request, not a CLI process)."""
        done: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(names) and time.monotonic() < deadline:
            for name in set(names) - set(done):
                status = (self.api(f"/api/jobs/{name}")[1] or {}).get("status")
                if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                    done[name] = status
            time.sleep(2)
        return {n: done.get(n, "TIMEOUT") for n in names}

    def logs(self, name: str) -> str:
        return self.ray(["job", "logs", name]).stdout

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop_group(proc)
        self.kill_leftovers()  # a Ray process that left its group
        kept = self.shared.parent / "ray-logs"  # for a failed run: the head's and the server's logs
        try:
            shutil.copytree(
                self.temp, kept, symlinks=True, ignore=shutil.ignore_patterns("runtime_resources", "sockets")
            )
        except (OSError, shutil.Error):
            pass
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ray-jobs"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_jobs_keep_their_results_on_shared_storage_and_log_to_the_mlflow_server(cluster):
    s = cluster.shared
    toy = ["--model", "toy", "--concept", "toy-red", "--preserve-prompts", "trce_ray/toy/prompts/preserve-red.txt"]
    toy += ["--templates", "2", "--synonyms", "2", "--set", "stage1.convention=normalised", "--set", "stage1.eta=1"]
    small_eval = ["--set", "eval.steps=4", "--set", "eval.limit=2"]
    small_eval += ["--set", "eval.cpus_per_actor=0.5", "--set", "eval.scorer_cpus=0.5"]
    stage2 = ["--stages", "text,visual", "--set", f"cache.root={s}/trce-cache", "--set", "cache.steps=4"]
    stage2 += ["--set", "cache.malicious_samples=2", "--set", "cache.shard_size=2", "--set", "cache.batch_size=4"]
    stage2 += ["--set", "train.batch_size=2", "--set", "train.epochs=1", "--set", "train.num_workers=0"]
    # a Tune trial cannot run Ray Train's local mode (docs/sweeps.md): one training worker
    trial_stage2 = [x if x != "train.num_workers=0" else "train.num_workers=1" for x in stage2]
    jobs = {
        "erase-t": ["python", "jobs/erase.py", *toy, "--output", f"{s}/runs/red"],
        "erase-tv": ["python", "jobs/erase.py", *toy, *stage2, "--output", f"{s}/runs/red-tv"],
        "eval": ["python", "jobs/run.py", "eval", "--model", "toy", "--suite", "toy", *small_eval, "--output",
                 f"{s}/evals/toy"],
        "sweep": ["python", "jobs/run.py", "sweep", "--config", "jobs/configs/toy-sweep.yaml", "--grid",
                  "stage1.eta=0.01,0.02", "--max-concurrent", "2", *small_eval, *trial_stage2, "--output",
                  f"{s}/sweeps/eta"],
        "job-local": ["python", "jobs/erase.py", *toy, "--output", "runs/x"],  # relative: the job's temp folder
    }  # fmt: skip
    assert cluster.api("/api/jobs/")[0] == 200 and _http(cluster.dash, "/api/jobs/")[0] != 200  # token auth is on
    cluster.submit(jobs)
    states = cluster.wait_all(list(jobs))
    logs = {name: cluster.logs(name) for name in jobs}
    for name, state in states.items():
        expected = "FAILED" if name == "job-local" else "SUCCEEDED"
        assert state == expected, f"{name}: {state}\n{logs[name][-3000:]}"

    # the relative output was refused with one sentence naming the job's temporary folder
    refusal = [line for line in logs["job-local"].splitlines() if "error:" in line]
    assert len(refusal) == 1 and "inside this Ray job's temporary folder" in refusal[0], logs["job-local"][-2000:]
    assert "runtime_resources/working_dir_files" in refusal[0]
    # stage 1 ran as a Ray task (its progress bar carries the task's name), outputs are on the shared folder
    assert "_stage1_task" in logs["erase-t"] and f"wrote {s}/runs/red" in logs["erase-t"]
    assert (s / "runs" / "red" / "stage1.safetensors").is_file()
    assert {"stage1.safetensors", "stage2.safetensors"} <= {p.name for p in (s / "runs" / "red-tv").iterdir()}
    assert list((s / "trce-cache").rglob("*.parquet")), "the trajectory cache is on the shared folder"
    evaluated = json.loads((s / "evals" / "toy" / "metrics.json").read_text())["metrics"]
    assert evaluated["images/toy-direct"] == 2 and evaluated["toy/direct"] >= 0.5  # the original model draws red
    with open(s / "sweeps" / "eta" / "sweep.csv") as f:
        rows = list(__import__("csv").DictReader(f))
    assert [r["stage1.eta"] for r in rows] == ["0.01", "0.02"] and [r["error"] for r in rows] == ["", ""]
    assert all(float(r["toy/direct"]) <= 0.5 for r in rows)  # each erased trial hardly draws red any more
    # both trials ran stage 2 from the one trajectory cache, built by at most one of them (the other waited for it)
    trial_dirs = [s / "sweeps" / "eta" / "trials" / r["trial"] / "erase" for r in rows]
    assert all((d / "stage2.safetensors").is_file() and (d / "stage1.safetensors").is_file() for d in trial_dirs)
    summaries = [json.loads((d / "stage2_summary.json").read_text()) for d in trial_dirs]
    assert len({x["cache"] for x in summaries}) == 1 and sum(not x["cache_reused"] for x in summaries) <= 1
    assert summaries[0]["start"] == "stage1" and summaries[0]["steps"] >= 1
    assert "trial(s) at once, not 2" not in logs["sweep"]  # 2 trials fit the head's 8 CPUs at their peak (2 x 1.25)
    # nothing a job wrote stayed in Ray's temporary job folders
    leaked = [
        str(p)
        for p in cluster.temp.rglob("*")
        if "working_dir_files" in str(p) and p.name in {"mlflow.db", "trce-cache", "mlartifacts", "stage1.safetensors"}
    ]
    assert not leaked, leaked

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    exp = client.get_experiment_by_name("trce-ray")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    by_command: dict[str, list] = {}
    for run in runs:
        by_command.setdefault(run.data.tags["trce.command"], []).append(run)
    assert {k: len(v) for k, v in by_command.items()} == {"erase": 2, "eval": 1, "sweep": 1, "sweep-trial": 2}
    assert all(r.info.status == "FINISHED" for r in runs)
    logged = by_command["eval"][0].data.metrics
    assert {k: logged[k] for k in ("toy/direct", "toy/preservation")} == {
        k: evaluated[k] for k in ("toy/direct", "toy/preservation")
    }  # the server holds what the job wrote to the shared folder
    trial_runs = {r.info.run_name: r.data.metrics for r in by_command["sweep-trial"]}
    assert {r["trial"]: float(r["toy/direct"]) for r in rows} == {k: m["toy/direct"] for k, m in trial_runs.items()}
    # the two trials ran at once: each trial's run opens when the trial starts and ends when it ends (in the trial's
    # own process), and the later start comes before the earlier end
    spans = [(r.info.start_time, r.info.end_time) for r in by_command["sweep-trial"]]
    assert max(a for a, _ in spans) < min(b for _, b in spans), spans
    assert all("loss" in m for m in trial_runs.values())  # each trial logged its stage-2 loss curve
    erase_t = next(r for r in by_command["erase"] if r.data.params["output"] == f"{s}/runs/red")
    artifacts = {a.path for a in client.list_artifacts(erase_t.info.run_id, "erased_model")}
    assert "erased_model/stage1.safetensors" in artifacts  # stored by the server under the shared folder
    assert list((s / "mlflow" / "artifacts").rglob("stage1.safetensors"))


def test_a_second_node_joins_and_ray_data_work_runs_on_both(cluster):
    cluster.join_second_node()
    out = cluster.shared / "data-nodes.json"
    cluster.submit({"data": ["python", "-c", DATA_JOB, str(out)]}, working_dir=False)
    state = cluster.wait_all(["data"], timeout=600)["data"]
    assert state == "SUCCEEDED", cluster.logs("data")[-3000:]
    result = json.loads(out.read_text())
    assert result["ids"] == list(range(16))
    assert len(result["alive"]) == 2 and result["used"] == result["alive"]
