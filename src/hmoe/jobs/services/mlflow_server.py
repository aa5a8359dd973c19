"""An MLflow tracking server on 127.0.0.1: sqlite backend, proxied artifacts, own session.

``start_server(MlflowServerConfig(...), state_dir)`` runs ``mlflow server`` as the leader of a
new session, waits for ``GET /health`` to answer 200 and records it in
``<state_dir>/mlflow.json``; ``stop_server(state_dir)`` signals that session only. The server
proxies artifacts (``--artifacts-destination``), so Ray workers on other nodes upload models
over HTTP instead of needing the server's disk; with ``artifacts_destination`` an ``s3://``
prefix, the server stores them there (its boto3 reads the standard ``AWS_*`` variables) and
no client needs S3 credentials for artifacts.

``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: MLflow 3.17 otherwise forks ``huey_consumer``
processes for GenAI jobs (about 0.5 GB RSS) that an experiment tracker does not use.

``use_auth=True`` starts MLflow's basic-auth app (``--app-name basic-auth``): every request but
``/health`` and static files needs a user and password (401 otherwise). Its users live in
``<root>/basic_auth.db``; the first start creates the admin ``admin_user`` with the password
read from ``password_file``, which hmoe fills with a random password (mode 0600) when the
default file does not exist yet, so no instance starts with a well-known password. MLflow uses
that password only to create the admin: later changes go through MLflow's user API. Clients
authenticate with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from hmoe.config import Config, ConfigError, config
from hmoe.jobs.services.processes import (
    LOOPBACK,
    ServiceError,
    http_status,
    port_in_use,
    read_state,
    session_members,
    spawn,
    stop_session,
    wait_http,
    write_state,
)
from hmoe.platform.core import storage

__all__ = [
    "MlflowServerConfig",
    "ServerInfo",
    "read_server",
    "server_status",
    "start_server",
    "stop_server",
]

STATE_FILE = "mlflow.json"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
HEALTHY = (200,)
AUTH_APP = "basic-auth"
AUTH_INI = "basic_auth.ini"
AUTH_DB = "basic_auth.db"
DEFAULT_PASSWORD_FILE = "admin-password"  # under root, created on the first --auth start
PASSWORD_BYTES = 24  # secrets.token_urlsafe: 32 characters
# what an authenticated user may do in an experiment it was given no permission on
AUTH_DEFAULT_PERMISSION = "READ"


@config
class MlflowServerConfig(Config):
    """How ``hmoe ui`` starts the tracking server.

    ``root``: the folder holding the sqlite store (``mlflow.db``) and the artifact root
    (``artifacts/``); relative paths are taken from the current directory. ``workers``: the
    server's uvicorn workers. ``use_auth``: MLflow's basic-auth app (module doc), whose admin
    ``admin_user`` gets the password in ``password_file`` (default ``<root>/admin-password``,
    generated when missing; a file named here must exist). ``artifacts_destination``: where the
    proxied artifacts are stored instead of ``<root>/artifacts`` (an ``s3://`` URI or a folder).
    """

    port: int = 5000
    root: str = "hmoe-mlflow"
    workers: int = 1
    use_auth: bool = False
    admin_user: str = "admin"
    password_file: str | None = None
    artifacts_destination: str | None = None
    start_timeout_s: float = 120.0
    stop_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"ui.port must be a port (1-65535), got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"ui.workers must be >= 1, got {self.workers}")
        if not self.root:
            raise ConfigError("ui.root must name a folder")
        if self.start_timeout_s <= 0 or self.stop_grace_s <= 0:
            raise ConfigError("ui.start_timeout_s and ui.stop_grace_s must be > 0")
        if not self.admin_user:
            raise ConfigError("ui.admin_user must name a user")
        if self.password_file is not None and not self.use_auth:
            raise ConfigError("ui.password_file is the basic-auth admin's: it needs --auth")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerInfo:
    """A running server as recorded in the state file."""

    pid: int
    url: str
    backend_store_uri: str
    artifacts: str
    log_file: str
    started_at: float
    auth_user: str | None = None
    password_file: str | None = None

    def describe(self) -> list[str]:
        lines = [
            f"MLflow tracking server (pid {self.pid}): {self.url}",
            f"  backend store:  {self.backend_store_uri}",
            f"  artifacts:      {self.artifacts} (proxied: clients upload over HTTP)",
            f"  use it with:    --tracking-uri {self.url}  (job specs: tracking.uri)",
        ]
        if self.auth_user is not None:
            lines += [
                f"  basic auth:     user {self.auth_user}, password in {self.password_file}",
                f"  clients:        MLFLOW_TRACKING_USERNAME={self.auth_user} "
                f'MLFLOW_TRACKING_PASSWORD="$(cat {self.password_file})"',
            ]
        return [*lines, f"  log: {self.log_file}"]


def _argv(cfg: MlflowServerConfig, db: Path, artifacts: str) -> list[str]:
    app = ["--app-name", AUTH_APP] if cfg.use_auth else []
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        LOOPBACK,
        "--port",
        str(cfg.port),
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--workers",
        str(cfg.workers),
        *app,
    ]


def _admin_password(cfg: MlflowServerConfig, root: Path) -> tuple[Path, str]:
    """The admin password file and its password; the default file is created when missing."""
    if cfg.password_file is not None:
        path = Path(cfg.password_file).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"ui.password_file: {path} does not exist")
    else:
        path = root / DEFAULT_PASSWORD_FILE
        if not path.exists():
            # created 0600 before the secret is written, so no other user can read it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
    password = path.read_text().strip()
    if not password:
        raise ConfigError(f"ui.password_file: {path} is empty")
    return path, password


def _auth_env(cfg: MlflowServerConfig, root: Path) -> tuple[dict[str, str], Path]:
    """The basic-auth app's environment: its ini (no secret in it), the admin password and a
    CSRF key (static for the server's life, shared by its workers through the environment)."""
    path, password = _admin_password(cfg, root)
    ini = root / AUTH_INI
    ini.write_text(
        "[mlflow]\n"
        f"default_permission = {AUTH_DEFAULT_PERMISSION}\n"
        f"database_uri = sqlite:///{root / AUTH_DB}\n"
        f"admin_username = {cfg.admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(PASSWORD_BYTES),
    }
    return env, path


def read_server(state_dir: Path) -> ServerInfo | None:
    data = read_state(Path(state_dir) / STATE_FILE)
    return ServerInfo(**data) if data is not None else None


def start_server(cfg: MlflowServerConfig, state_dir: Path) -> ServerInfo:
    """Start the server, wait until it is healthy, record it; see the module doc.

    Raises ``ServiceError`` when a server recorded in ``state_dir`` still runs, the port is taken
    or ``/health`` does not answer in ``start_timeout_s``.
    """
    state_dir = Path(state_dir).expanduser().absolute()
    running = read_server(state_dir)
    if running is not None and session_members(running.pid):
        raise ServiceError(
            f"an MLflow server recorded in {state_dir} still runs (pid {running.pid}, "
            f"{running.url}); `hmoe ui --stop` first"
        )
    if port_in_use(cfg.port):
        raise ServiceError(f"port {cfg.port} on {LOOPBACK} is taken; choose another (--port)")
    root = Path(cfg.root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    if cfg.artifacts_destination is None:
        (root / ARTIFACTS_DIR).mkdir(exist_ok=True)
        artifacts = str(root / ARTIFACTS_DIR)
    else:
        artifacts = storage.absolute(cfg.artifacts_destination)
        storage.check_reachable(artifacts)  # a wrong bucket fails here, not at the first upload
    db = root / DB_FILE
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    password_file = None
    if cfg.use_auth:
        auth_env, password_file = _auth_env(cfg, root)
        env |= auth_env
    log_file = state_dir / "mlflow-server.log"
    process = spawn(_argv(cfg, db, artifacts), env, log_file)
    info = ServerInfo(
        pid=process.pid,
        url=f"http://{LOOPBACK}:{cfg.port}",
        backend_store_uri=f"sqlite:///{db}",
        artifacts=artifacts,
        log_file=str(log_file),
        started_at=time.time(),
        auth_user=cfg.admin_user if cfg.use_auth else None,
        password_file=str(password_file) if password_file is not None else None,
    )
    write_state(state_dir / STATE_FILE, dataclasses.asdict(info))
    try:
        wait_http(f"{info.url}/health", HEALTHY, cfg.start_timeout_s, process, log_file)
    except ServiceError:
        stop_session(process.pid, cfg.stop_grace_s, process)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return info


def stop_server(
    state_dir: Path, grace_s: float = MlflowServerConfig().stop_grace_s
) -> ServerInfo | None:
    """Stop the server recorded in ``state_dir`` (its whole session); ``None`` if none was."""
    info = read_server(state_dir)
    if info is None:
        return None
    stop_session(info.pid, grace_s)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return info


def server_status(state_dir: Path) -> dict[str, Any] | None:
    info = read_server(state_dir)
    if info is None:
        return None
    return {
        "server": info,
        "processes": len(session_members(info.pid)),
        "healthy": http_status(f"{info.url}/health") in HEALTHY,
    }
