"""A local Ray head with the dashboard and the Jobs API, on 127.0.0.1, token auth on.

``start_head(ClusterConfig(...), state_dir)`` runs ``ray start --head --block`` as the leader
of a new session, waits until the dashboard answers, and records what a client needs in
``<state_dir>/cluster.json``; ``stop_head(state_dir)`` stops exactly that session (never
``ray stop``, which would stop every Ray on the machine, a test session's own Ray included).
``start_node(ClusterConfig(join=ADDRESS, ...), state_dir)`` joins a worker node to a head the
same way (``ray start --address``, recorded in ``<state_dir>/node.json``; ``stop_node``), with
its own temp dir and ports, so that it can run beside its head on one machine.

Why the details:

* every port is explicit (0 = a free one), so a second cluster on the machine does not collide
  with the defaults of the first (GCS 6379, client server 10001, dashboard agent 52365);
* ``--temp-dir`` is private to this head: ``ray start`` records its address in
  ``<temp-dir>/ray_current_cluster``, and a ``ray.init()`` elsewhere on the machine would read
  the default ``/tmp/ray/ray_current_cluster`` and attach to this head instead of starting its
  own;
* token authentication (Ray 2.60's default) stays on: the head gets ``RAY_AUTH_MODE=token`` and
  ``RAY_AUTH_TOKEN_PATH``; the dashboard answers 401 without the token, which is how "up" looks;
* the interpreter's ``bin/`` goes first on the head's ``PATH``, so a job entrypoint's
  ``python -m hmoe.jobs.entry`` runs in the environment hmoe is installed in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmoe.config import Config, ConfigError, FrozenMap, config
from hmoe.jobs.services.processes import (
    LOOPBACK,
    ServiceError,
    alive,
    free_port,
    http_status,
    port_in_use,
    read_state,
    session_members,
    spawn,
    stop_session,
    wait_http,
    write_state,
)
from hmoe.platform.core.ray_start import (
    RAY_API_SERVER_ENV,
    RAY_BUILTIN_RESOURCES,
    api_server_env,
    dashboard_url,
)

__all__ = [
    "ClusterConfig",
    "HeadInfo",
    "NodeInfo",
    "default_state_dir",
    "default_token_file",
    "head_status",
    "read_head",
    "read_node",
    "start_head",
    "start_node",
    "stop_head",
    "stop_node",
]

STATE_FILE = "cluster.json"
NODE_STATE_FILE = "node.json"
NODE_READY = "Ray runtime started"  # what ``ray start`` prints once the node's raylet is up
STATE_DIR_ENV = "HMOE_STATE_DIR"
TOKEN_BYTES = 32  # 256 bits, as ``ray get-auth-token --generate``
DASHBOARD_READY = (200, 401)  # 401: token auth is on and the probe sends no token
ADDRESS_FILE = "ray_current_cluster"  # written by ray start into its temp dir
ADDRESS_POLL_S = 0.2
TEMP_DIR_PREFIX = "hmoe-ray-"  # short: Ray's unix socket paths must stay < 108 chars
_ADDRESS = re.compile(r"^[^\s:/]+:\d{1,5}$")


@config
class ClusterConfig(Config):
    """How ``hmoe cluster up`` starts the head.

    ``port``: the GCS port workers and ``ray.init(address=...)`` connect to; ``dashboard_port``:
    the dashboard and Jobs API (0 picks a free port for either). ``num_cpus``/``num_gpus``: the
    logical resources the head advertises (``None``: what Ray detects). ``token_file``: the
    auth token (``None``: Ray's ``~/.ray/auth_token``, created when absent). ``join``: the GCS
    address of a head to join as a worker node instead of starting a head (``port`` and
    ``dashboard_port`` then do not apply). ``resources``: custom resources the node
    advertises (``{"worker_node": 1}``), e.g. for ``train.node_resource``.
    """

    port: int = 6379
    dashboard_port: int = 8265
    num_cpus: int | None = None
    num_gpus: int | None = None
    token_file: str | None = None
    join: str | None = None
    resources: Mapping[str, float] = FrozenMap()
    start_timeout_s: float = 120.0
    stop_grace_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("port", "dashboard_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"cluster.{name} must be a port (0-65535), got {value}")
        if self.port and self.port == self.dashboard_port:
            raise ConfigError("cluster.port and cluster.dashboard_port must differ")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"cluster.{name} must be >= 0, got {value}")
        if self.start_timeout_s <= 0 or self.stop_grace_s <= 0:
            raise ConfigError("cluster.start_timeout_s and stop_grace_s must be > 0")
        if self.join is not None and not _ADDRESS.match(self.join):
            raise ConfigError(f"cluster.join must be a GCS address HOST:PORT, got {self.join!r}")
        for name, amount in self.resources.items():
            if name in RAY_BUILTIN_RESOURCES or amount <= 0:
                raise ConfigError(
                    f"cluster.resources: {name}={amount} must be a custom resource > 0 "
                    "(CPUs and GPUs: --num-cpus, --num-gpus)"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadInfo:
    """A running head as recorded in the state file: everything a client needs."""

    pid: int
    gcs_address: str
    dashboard_url: str
    token_file: str
    temp_dir: str
    log_file: str
    num_cpus: int | None
    started_at: float

    def client_env(self) -> dict[str, str]:
        """Environment for ``ray job ...``, ``ray status`` or a driver outside hmoe."""
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_file,
        }

    def describe(self) -> list[str]:
        """The lines ``hmoe cluster up/status`` prints."""
        lines = [
            f"Ray head (pid {self.pid}) on {LOOPBACK}",
            f"  GCS address:    {self.gcs_address}  (ray.init(address=...), worker nodes)",
            f"  dashboard/Jobs: {self.dashboard_url}  (hmoe submit --address ...)",
            f"  auth:           token, file {self.token_file}",
            "  a client outside hmoe needs:",
        ]
        lines += [f"    export {key}={value}" for key, value in self.client_env().items()]
        lines.append(f"  log: {self.log_file}")
        return lines


def default_state_dir() -> Path:
    """``$HMOE_STATE_DIR`` or ``~/.hmoe``: where ``hmoe cluster``/``hmoe ui`` keep their state."""
    return Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".hmoe").expanduser()


def default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def _ensure_token(path: Path) -> None:
    if path.is_file() and path.read_text().strip():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(TOKEN_BYTES))


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        raise ServiceError("the `ray` command is not installed (pip install 'ray[default]')")
    return found


def _capacity_flags(cfg: ClusterConfig) -> list[str]:
    """What a node offers: ``ray start``'s CPU, GPU and custom-resource flags (head or joined)."""
    flags = []
    if cfg.num_cpus is not None:
        flags.append(f"--num-cpus={cfg.num_cpus}")
    if cfg.num_gpus is not None:
        flags.append(f"--num-gpus={cfg.num_gpus}")
    if cfg.resources:
        flags.append(f"--resources={json.dumps(dict(cfg.resources))}")
    return flags


def _head_argv(cfg: ClusterConfig, gcs: int, dashboard: int, temp_dir: Path) -> list[str]:
    argv = [
        _ray_executable(),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={gcs}",
        "--include-dashboard=true",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    return argv + _capacity_flags(cfg)


def _head_env(token_file: Path, dashboard_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return env | api_server_env(dashboard_port)


def read_head(state_dir: Path) -> HeadInfo | None:
    """The head recorded in ``state_dir``, alive or not (``None`` when none was recorded)."""
    data = read_state(Path(state_dir) / STATE_FILE)
    return HeadInfo(**data) if data is not None else None


def start_head(cfg: ClusterConfig, state_dir: Path) -> HeadInfo:
    """Start a head (see the module doc) and return what a client needs to reach it.

    Raises ``ServiceError`` when a head recorded in ``state_dir`` still runs, a requested port is
    taken, or the dashboard does not come up in ``start_timeout_s``.
    """
    state_dir = Path(state_dir).expanduser().absolute()
    running = read_head(state_dir)
    if running is not None and session_members(running.pid):
        raise ServiceError(
            f"a Ray head recorded in {state_dir} still runs (pid {running.pid}, "
            f"{running.dashboard_url}); `hmoe cluster down` first"
        )
    for port in (cfg.port, cfg.dashboard_port):
        if port and port_in_use(port):
            raise ServiceError(f"port {port} on {LOOPBACK} is taken; choose another (--port)")
    gcs, dashboard = cfg.port or free_port(), cfg.dashboard_port or free_port()
    token_file = Path(cfg.token_file).expanduser() if cfg.token_file else default_token_file()
    _ensure_token(token_file)
    temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX))
    log_file = state_dir / "ray-head.log"
    argv, env = _head_argv(cfg, gcs, dashboard, temp_dir), _head_env(token_file, dashboard)
    # jobs inherit the head's working directory: keep their relative paths out of the caller's
    process = spawn(argv, env, log_file, cwd=state_dir)
    info = HeadInfo(
        pid=process.pid,
        gcs_address=f"{LOOPBACK}:{gcs}",
        dashboard_url=dashboard_url(dashboard),
        token_file=str(token_file.absolute()),
        temp_dir=str(temp_dir),
        log_file=str(log_file),
        num_cpus=cfg.num_cpus,
        started_at=time.time(),
    )
    write_state(state_dir / STATE_FILE, dataclasses.asdict(info))
    try:
        wait_http(
            f"{info.dashboard_url}/api/version",
            DASHBOARD_READY,
            cfg.start_timeout_s,
            process,
            log_file,
        )
    except ServiceError:
        stop_session(process.pid, cfg.stop_grace_s, process)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    recorded = _recorded_address(temp_dir / ADDRESS_FILE, cfg.start_timeout_s)
    if recorded:
        info = dataclasses.replace(info, gcs_address=recorded)
        write_state(state_dir / STATE_FILE, dataclasses.asdict(info))
    return info


def _recorded_address(path: Path, timeout_s: float) -> str:
    """The GCS address ``ray start`` records (it writes it just after the dashboard is up).

    Ray advertises the node's routable IP even when told 127.0.0.1 (``resolve_ip_for_localhost``
    in ``ray._private.services``), so this is what other processes must use.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(ADDRESS_POLL_S)
    return ""


def stop_head(state_dir: Path, grace_s: float = ClusterConfig().stop_grace_s) -> HeadInfo | None:
    """Stop the head recorded in ``state_dir`` and forget it; ``None`` when there was none."""
    info = read_head(state_dir)
    if info is None:
        return None
    stop_session(info.pid, grace_s)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(info.temp_dir, ignore_errors=True)
    return info


def head_status(state_dir: Path) -> dict[str, Any] | None:
    """The recorded head, whether its processes and dashboard are up, and its resources."""
    info = read_head(state_dir)
    if info is None:
        return None
    status = http_status(f"{info.dashboard_url}/api/version")
    return {
        "head": info,
        "leader_alive": alive(info.pid),
        "processes": len(session_members(info.pid)),
        "dashboard_up": status in DASHBOARD_READY,
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeInfo:
    """A worker node joined to a head, as recorded in the state file."""

    pid: int
    head_address: str
    temp_dir: str
    log_file: str
    num_cpus: int | None
    resources: dict[str, float]
    started_at: float

    def describe(self) -> list[str]:
        return [
            f"Ray worker node (pid {self.pid}) joined to {self.head_address}",
            f"  resources: CPU {self.num_cpus if self.num_cpus is not None else 'detected'}"
            + "".join(f", {k} {v:g}" for k, v in sorted(self.resources.items())),
            f"  temp dir: {self.temp_dir}",
            f"  log: {self.log_file}",
        ]


def _node_argv(cfg: ClusterConfig, temp_dir: Path) -> list[str]:
    argv = [
        _ray_executable(),
        "start",
        f"--address={cfg.join}",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        # the head on the same machine holds the default ports: every listener picks its own
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    return argv + _capacity_flags(cfg)


def read_node(state_dir: Path) -> NodeInfo | None:
    data = read_state(Path(state_dir) / NODE_STATE_FILE)
    return NodeInfo(**data) if data is not None else None


def start_node(cfg: ClusterConfig, state_dir: Path) -> NodeInfo:
    """Join a worker node to the head at ``cfg.join`` (see the module doc).

    Raises ``ServiceError`` when a node recorded in ``state_dir`` still runs, or the node does
    not come up in ``start_timeout_s``.
    """
    assert cfg.join is not None, "start_node needs cfg.join"
    state_dir = Path(state_dir).expanduser().absolute()
    running = read_node(state_dir)
    if running is not None and session_members(running.pid):
        raise ServiceError(
            f"a Ray worker node recorded in {state_dir} still runs (pid {running.pid}); "
            "`hmoe cluster down` first"
        )
    token_file = Path(cfg.token_file).expanduser() if cfg.token_file else default_token_file()
    if not token_file.is_file():
        raise ServiceError(f"no auth token at {token_file}: use the head's (--token-file)")
    head = read_head(state_dir)
    env = _head_env(token_file, 0)
    env.pop(RAY_API_SERVER_ENV)
    if head is not None and head.gcs_address == cfg.join:
        env[RAY_API_SERVER_ENV] = head.dashboard_url  # see api_server_env
    temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX))
    log_file = state_dir / "ray-node.log"
    log_file.unlink(missing_ok=True)  # the readiness line must be this start's
    process = spawn(_node_argv(cfg, temp_dir), env, log_file, cwd=state_dir)
    info = NodeInfo(
        pid=process.pid,
        head_address=cfg.join,
        temp_dir=str(temp_dir),
        log_file=str(log_file),
        num_cpus=cfg.num_cpus,
        resources=dict(cfg.resources),
        started_at=time.time(),
    )
    write_state(state_dir / NODE_STATE_FILE, dataclasses.asdict(info))
    deadline = time.monotonic() + cfg.start_timeout_s
    while NODE_READY not in log_file.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_session(process.pid, cfg.stop_grace_s, process)
            (state_dir / NODE_STATE_FILE).unlink(missing_ok=True)
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            raise ServiceError(f"the Ray worker node did not join {cfg.join}: " + " | ".join(tail))
        time.sleep(ADDRESS_POLL_S)
    return info


def stop_node(state_dir: Path, grace_s: float = ClusterConfig().stop_grace_s) -> NodeInfo | None:
    """Stop the worker node recorded in ``state_dir`` and forget it; ``None`` if none was."""
    info = read_node(state_dir)
    if info is None:
        return None
    stop_session(info.pid, grace_s)
    (Path(state_dir) / NODE_STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(info.temp_dir, ignore_errors=True)
    return info
