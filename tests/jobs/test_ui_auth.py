"""``hmoe ui --auth``: MLflow's basic-auth app, a generated admin password, 401 without it."""

from __future__ import annotations

import base64
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hmoe.jobs.services.mlflow_server import DEFAULT_PASSWORD_FILE, MlflowServerConfig, read_server
from hmoe.jobs.services.processes import free_port, session_members
from tests.jobs.conftest import hmoe_cli

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
# the server checks a password with PBKDF2, seconds on a busy 2-core box (a probe waits 2 s)
REQUEST_TIMEOUT_S = 60


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.slow
def test_auth_server_refuses_anonymous_requests_and_accepts_the_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from mlflow import MlflowClient

    state, root = tmp_path / "state", tmp_path / "mlflow"
    flags = ("--root", str(root), "--state-dir", str(state))
    started = hmoe_cli("ui", "--auth", "--port", str(free_port()), *flags)
    assert started.returncode == 0, started.stderr
    server = read_server(state)
    try:
        password_file = root / DEFAULT_PASSWORD_FILE
        assert f"password in {password_file}" in started.stdout
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 32 and password not in (root / "basic_auth.ini").read_text()

        assert _status(f"{server.url}/health") == 200  # the health check needs no user
        assert _status(server.url + SEARCH) == 401
        assert _status(server.url + SEARCH, _basic("admin", "password1234")) == 401
        assert _status(server.url + SEARCH, _basic("admin", password)) == 200

        # what the docs tell clients to set; MLflow reads it per request
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        assert MlflowClient(server.url).create_experiment("behind-auth")
    finally:
        stopped = hmoe_cli("ui", "--stop", "--state-dir", str(state))
    assert stopped.returncode == 0 and session_members(server.pid) == []


def test_a_password_file_is_refused_without_auth():
    with pytest.raises(ValueError, match="needs --auth"):
        MlflowServerConfig(password_file="/some/file")
