"""Shared fixtures: the real-data root, seeded RNGs, one session-scoped local Ray cluster, and
an S3-compatible server."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (benchmarks are scripts, not a package;
    their own imports of ``repro`` and siblings resolve from ``benchmarks/``)."""
    folder = REPO_ROOT / "benchmarks"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_root() -> Path:
    """``HMOE_DATA_ROOT`` or ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("HMOE_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set HMOE_DATA_ROOT to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (2 CPUs, no dashboard), shut down at the end."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


S3_START_TIMEOUT_S = 60.0
S3_STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on 127.0.0.1 and the AWS variables that point pyarrow, Ray and boto3 at
    it (they are set in this process's environment, so that child processes inherit them)."""

    endpoint: str
    env: dict[str, str]

    def bucket(self, name: str) -> str:
        """Create the bucket ``name`` (idempotent) and return its ``s3://`` URI."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint)
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        import boto3

        pages = boto3.client("s3", endpoint_url=self.endpoint).get_paginator("list_objects_v2")
        return [o["Key"] for p in pages.paginate(Bucket=bucket, Prefix=prefix) for o in
                p.get("Contents", [])]  # fmt: skip


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server (``moto[server]``, a dev dependency) for the session; stopped by PID."""
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    from hmoe.jobs.services.processes import free_port, spawn, stop_session, wait_http
    from hmoe.platform.core import storage

    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = spawn(argv, dict(os.environ), log)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    try:
        wait_http(f"{endpoint}/", (200,), S3_START_TIMEOUT_S, process, log)
        with storage.environ(env):
            yield S3Server(endpoint=endpoint, env=env)
    finally:
        stop_session(process.pid, S3_STOP_GRACE_S, process)
