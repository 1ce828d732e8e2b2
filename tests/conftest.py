"""Shared test set-up: single-threaded torch (faster for tiny models on 2 cores), CPU DeepSpeed, a local Ray."""

import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Base-model fingerprints are remembered under TRCE_CACHE_HOME; keep the tests' out of the user's home.
os.environ.setdefault("TRCE_CACHE_HOME", tempfile.mkdtemp(prefix="trce-home-"))
# Commands log to MLflow by default; tests must never write ./mlflow.db into the checkout.
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp(prefix='trce-mlflow-')}/mlflow.db")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _shared_data() -> str:
    """The paper's prompt sets: $TRCE_SHARED_DATA, else ../shared/data beside the checkout, else /work/shared/data."""
    candidates = [
        os.environ.get("TRCE_SHARED_DATA"),
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
        "/work/shared/data",
    ]
    return next((c for c in candidates if c and os.path.isdir(c)), candidates[1])


SHARED_DATA = _shared_data()


@pytest.fixture
def tiny_pipe():
    """A fresh tiny SD-1.x pipeline with random weights (seed 0) and CLIP's real tokenizer."""
    from trce_ray.models.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """The same tiny pipeline saved as a diffusers folder (safetensors)."""
    from trce_ray.models.tiny import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_sd_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One private local Ray instance (2 CPUs, loopback only) for the whole session; tests must not call
    ray.shutdown()."""
    from trce_ray.ray_runtime import ensure_ray

    yield ensure_ray(num_cpus=2)
