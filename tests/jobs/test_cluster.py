"""Local services: session-scoped stopping (fast, plain processes) and the running head and
MLflow server of ``conftest.services`` (token auth, loopback dashboard, no collision with the
test session's own Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmoe.config import ConfigError
from hmoe.jobs.services.cluster import ClusterConfig, start_head
from hmoe.jobs.services.mlflow_server import MlflowServerConfig, start_server
from hmoe.jobs.services.processes import (
    ServiceError,
    alive,
    free_port,
    http_status,
    read_state,
    session_members,
    spawn,
    stop_session,
    write_state,
)
from tests.jobs.conftest import Services

# a leader that forks a child which moves to its own process group (as Ray workers do), and one
# that ignores SIGTERM (as `ray start --block` did here): both must still be stopped
TREE = (
    "import os, signal, subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', "
    "'import os, signal, time; os.setpgid(0, 0); signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " time.sleep(120)'])\n"
    "time.sleep(120)\n"
)


def _wait_members(sid: int, count: int) -> list[int]:
    deadline = time.monotonic() + 20
    while len(members := session_members(sid)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


def test_stop_session_stops_the_whole_session_and_nothing_else(tmp_path: Path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    leader = spawn([sys.executable, "-c", TREE], {"PATH": ""}, tmp_path / "tree.log")
    try:
        members = _wait_members(leader.pid, 2)
        assert leader.pid in members and len(members) == 2
        killed = stop_session(leader.pid, grace_s=1.0, leader=leader)
        assert session_members(leader.pid) == []
        assert len(killed) == 1  # the child ignoring SIGTERM needed SIGKILL
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()


def test_state_file_round_trip(tmp_path: Path):
    path = tmp_path / "state" / "x.json"
    assert read_state(path) is None
    write_state(path, {"pid": 1, "url": "http://127.0.0.1:1"})
    assert read_state(path) == {"pid": 1, "url": "http://127.0.0.1:1"}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"port": 70000}, "cluster.port must be a port"),
        ({"port": 7000, "dashboard_port": 7000}, "must differ"),
        ({"num_cpus": -1}, "cluster.num_cpus must be >= 0"),
        ({"num_cpu": 2}, r"unknown key\(s\) \['num_cpu'\]"),
        ({"join": "http://127.0.0.1:8265"}, "cluster.join must be a GCS address HOST:PORT"),
        ({"resources": {"CPU": 1}}, "cluster.resources: CPU=1.0 must be a custom resource"),
        ({"resources": {"worker_node": 0}}, "cluster.resources: worker_node=0.0 must be a"),
    ],
)
def test_cluster_config_refuses_bad_values(cfg: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        ClusterConfig.from_dict(cfg)


def test_start_refuses_a_taken_port_before_starting_anything(tmp_path: Path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServiceError, match=f"port {port} .* is taken"):
            start_head(ClusterConfig(port=0, dashboard_port=port), tmp_path)
        with pytest.raises(ServiceError, match=f"port {port} .* is taken"):
            start_server(MlflowServerConfig(port=port, root=str(tmp_path / "m")), tmp_path)
    assert not (tmp_path / "cluster.json").exists() and not (tmp_path / "mlflow.json").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_head_keeps_token_auth_and_its_own_address(services: Services):
    from hmoe.jobs.services.cluster import read_head

    head = read_head(services.state_dir)
    token = services.token_file.read_text().strip()
    assert head.dashboard_url.startswith("http://127.0.0.1:")
    assert http_status(f"{head.dashboard_url}/api/version") == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert http_status(f"{head.dashboard_url}/api/version", bearer) == 200
    assert http_status(f"{head.dashboard_url}/api/version", {"Authorization": "Bearer x"}) == 403
    # the head records its address in its own temp dir, not /tmp/ray/ray_current_cluster
    recorded = (Path(head.temp_dir) / "ray_current_cluster").read_text().strip()
    assert recorded == head.gcs_address
    default = Path("/tmp/ray/ray_current_cluster")
    assert not default.exists() or default.read_text().strip() != head.gcs_address


@pytest.mark.ray
@pytest.mark.slow
def test_head_does_not_capture_the_sessions_own_ray(services: Services, ray_cluster):
    from hmoe.jobs.services.cluster import read_head

    head = read_head(services.state_dir)
    own = ray_cluster.get_runtime_context().gcs_address
    assert own != head.gcs_address
    assert ray_cluster.cluster_resources()["CPU"] == 2  # the head advertises HEAD_CPUS = 4


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_server_is_healthy_and_recorded(services: Services):
    from hmoe.jobs.services.mlflow_server import server_status

    status = server_status(services.state_dir)
    assert status["healthy"] and status["processes"] >= 1
    assert status["server"].url == services.tracking_uri
    assert services.tracking_uri.startswith("http://127.0.0.1:")
    assert http_status(f"http://127.0.0.1:{free_port()}/health") is None


# Train V2's placement-group cleaner asks the State API whether its controller is alive; the
# probe asks the same question from inside a Ray actor. Without a named API server the client
# scans the machine for Ray processes and refuses when it finds several, as it does here (the
# session's own Ray and the head), and the cleaner then never frees a stopped trial's CPUs.
STATE_PROBE = """
import sys, ray
from ray._private.services import find_gcs_addresses
from hmoe.platform.api import ensure_ray

if len(sys.argv) > 1:
    ray.init(address=sys.argv[1], log_to_driver=False)
else:
    ensure_ray(1.0)

@ray.remote(num_cpus=0)
class Probe:
    def state(self, actor_id):
        from ray.util.state import get_actor
        return get_actor(actor_id, timeout=60).state

probe = Probe.remote()
print(len(find_gcs_addresses()), ray.get(probe.state.remote(probe._actor_id.hex())))
"""


def _probe_state_api(env: dict[str, str], *address: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", STATE_PROBE, *address],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rays, state = done.stdout.split()[-2:]
    return int(rays), state


@pytest.mark.ray
@pytest.mark.slow
def test_workers_reach_the_state_api_beside_other_rays(services: Services, ray_cluster):
    from hmoe.jobs.services.cluster import read_head

    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    base["RAY_USAGE_STATS_ENABLED"] = "0"
    # a Ray that hmoe starts itself (hmoe train/tune without a cluster)
    rays, state = _probe_state_api(base)
    assert rays >= 3 and state == "ALIVE"
    # the head of `hmoe cluster up`, reached as users do, with its token
    head = read_head(services.state_dir)
    env = base | {k: v for k, v in head.client_env().items() if k != "RAY_ADDRESS"}
    rays, state = _probe_state_api(env, head.gcs_address)
    assert rays >= 2 and state == "ALIVE"
