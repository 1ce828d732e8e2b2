"""The one way trce-ray reaches Ray: join the cluster the user names, else start a private local instance.

- `RAY_ADDRESS` set (by the user, or by `ray job submit` inside a job): join that cluster; the address is probed
  first, so an unreachable cluster fails after `TRCE_RAY_CONNECT_TIMEOUT` seconds (default 20) with one sentence
  instead of Ray's minutes of retries.
- Not set: always start a new local instance, never join one left running by someone else (Ray's own `ray.init()`
  would join the instance in `/tmp/ray/ray_current_cluster`). It binds every port to 127.0.0.1, runs no dashboard,
  keeps its files in a private temp folder (removed at exit), and ends with this process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from urllib.parse import urlparse

from .errors import TRCEError

CONNECT_TIMEOUT_ENV = "TRCE_RAY_CONNECT_TIMEOUT"
_LOOPBACK = "127.0.0.1"


def ensure_ray(num_cpus: int | None = None):
    """Connect this process to Ray once (a no-op when it already is) and return the `ray` module.

    Args:
        num_cpus: CPUs of a local instance (default: all); ignored when joining a cluster.

    Raises:
        TRCEError: RAY_ADDRESS names a cluster that cannot be reached, or a dashboard URL.
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS", "").strip()
        with _keep_our_sigterm_handler():
            if address:
                _join(ray, address)
            else:
                _start_local(ray, num_cpus)
    return ray


@contextmanager
def _keep_our_sigterm_handler():
    """ray.init replaces the SIGTERM handler twice (sys.exit(15), then "kill the node, exit 1"); under the CLI,
    whose handler says what was kept and exits 143, a SIGTERM during or after ray.init must reach that handler.
    Ray's node processes still end with this process (Ray's exit hooks, and they die with their parent)."""
    import ray._private.utils as utils

    from .interrupts import handlers_installed, reinstall_handlers

    original = getattr(utils, "set_sigterm_handler", None)
    if handlers_installed() and original is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if original is not None:
            utils.set_sigterm_handler = original
        reinstall_handlers()


def _join(ray, address: str) -> None:
    if address.startswith(("http://", "https://")):
        raise TRCEError(
            f"RAY_ADDRESS={address} is a dashboard URL, which only `ray job submit` takes; submit the command as a "
            "job (see jobs/README.md) or set RAY_ADDRESS to the cluster's GCS address (host:6379)"
        )
    target = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        target = canonicalize_bootstrap_address("auto") or ""
        if not target:
            raise TRCEError("RAY_ADDRESS=auto but no Ray cluster runs on this machine; start one or unset RAY_ADDRESS")
    host, port = _host_port(target)
    timeout = float(os.environ.get(CONNECT_TIMEOUT_ENV, "20"))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise TRCEError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({err.strerror or 'timed out'} after "
            f"{timeout:g} s); start it, fix the address, or unset RAY_ADDRESS to run on a private local instance"
        ) from None
    if host in ("127.0.0.1", "localhost", "::1"):  # a loopback-only cluster (e.g. another trce-ray's instance)
        with _loopback_node({}):
            ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address=address, log_to_driver=True)


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname or not parsed.port:
        raise TRCEError(f"RAY_ADDRESS={address} is not of the form host:port (or ray://host:port)")
    return parsed.hostname, parsed.port


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_LOOPBACK, 0))
        return sock.getsockname()[1]


@contextmanager
def _loopback_node(env: dict[str, str]):
    """While Ray starts or joins a node: its IP is 127.0.0.1, and `env` is set for the processes it starts.

    Ray replaces a node IP (and a cluster address) of 127.0.0.1 by the host's address unless it believes clusters
    are off; with them off, every gRPC server, agent and worker binds to the node IP, i.e. loopback. Both the flag
    and the environment are restored once the node runs.
    """
    import ray._private.ray_constants as constants

    env = {constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0", **env}
    saved_flag, saved_env = constants.ENABLE_RAY_CLUSTER, {k: os.environ.get(k) for k in env}
    constants.ENABLE_RAY_CLUSTER = False
    os.environ.update(env)
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start_local(ray, num_cpus: int | None) -> None:
    import ray._private.ray_constants as constants

    # Ray's own processes started by the node (agents, workers) inherit RAY_ADDRESS naming this instance, which
    # Ray's state API inside Ray Train needs when other Ray instances run on the machine ("Found multiple active
    # Ray instances"); the GCS port is chosen first so RAY_ADDRESS is known before the node starts.
    port = _free_port()
    env = {constants.GCS_PORT_ENVIRONMENT_VARIABLE: str(port), "RAY_ADDRESS": f"{_LOOPBACK}:{port}"}
    temp_dir = tempfile.mkdtemp(prefix="trce-ray-")  # short: Ray's Unix socket paths must fit in 107 bytes
    try:
        with _loopback_node(env):
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=True,
                _node_ip_address=_LOOPBACK,
                _temp_dir=temp_dir,
            )
    except Exception as err:  # Ray's own startup failures (a node that times out on an overloaded machine, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TRCEError(f"could not start a local Ray instance ({first}); its logs are in {temp_dir}") from None
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    from .interrupts import scratch

    scratch(temp_dir)

    def _cleanup() -> None:  # registered after ray.init, so it runs before Ray's own exit hooks
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)

    atexit.register(_cleanup)
