"""Local background services (a Ray head, an MLflow server): start, record, wait, stop.

A service is started in a new session (``start_new_session=True``), so it and everything it
spawns carry the leader's pid as their session id, including processes that move to their own
process group (Ray workers do). Stopping signals exactly that session: SIGTERM to every member,
a grace period, then SIGKILL to the survivors. Nothing outside the session is ever signalled,
so a second Ray cluster or another user's MLflow server on the same machine is left alone.
A small JSON state file records what a later ``stop`` or ``status`` needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hmoe.platform.core.host import LOOPBACK, alive, file_lock, free_port, proc_stat

__all__ = [
    "LOOPBACK",
    "ServiceError",
    "alive",
    "file_lock",
    "free_port",
    "http_status",
    "read_state",
    "session_members",
    "spawn",
    "stop_session",
    "tail",
    "wait_http",
    "write_state",
]

POLL_S = 0.5
HTTP_PROBE_TIMEOUT_S = 2.0
LOG_TAIL_CHARS = 3000


class ServiceError(RuntimeError):
    """A service did not start, or did not stop, as asked; the message says why."""


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(HTTP_PROBE_TIMEOUT_S)
        return sock.connect_ex((host, port)) == 0


def spawn(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new session, stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (the leader included while it lives)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is not None and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return sorted(members)


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_session(sid: int, grace_s: float, leader: subprocess.Popen | None = None) -> list[int]:
    """SIGTERM every member of session ``sid``, SIGKILL those left after ``grace_s``.

    Returns the pids that had to be killed. ``leader``: the ``Popen`` of the leader when this
    process started it, so that it is reaped instead of lingering as a zombie.
    """
    _signal_all(session_members(sid), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while session_members(sid) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    survivors = session_members(sid)
    _signal_all(survivors, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while session_members(sid) and time.monotonic() < deadline:
        time.sleep(POLL_S / 5)
    if leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=grace_s)
    left = session_members(sid)
    if left:
        raise ServiceError(f"processes {left} of session {sid} survived SIGKILL")
    return survivors


def http_status(url: str, headers: Mapping[str, str] | None = None) -> int | None:
    """The HTTP status of ``GET url``, or ``None`` when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=HTTP_PROBE_TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def wait_http(
    url: str,
    ready: Sequence[int],
    timeout_s: float,
    process: subprocess.Popen,
    log_path: Path,
) -> None:
    """Poll ``url`` until it answers one of the ``ready`` statuses.

    Raises ``ServiceError`` with the log's tail when ``process`` exits first or time runs out.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_status(url) in ready:
            return
        if process.poll() is not None:
            raise ServiceError(
                f"{process.args[0]} exited with code {process.returncode} before {url} "
                f"answered; log {log_path}:\n{tail(log_path)}"
            )
        time.sleep(POLL_S)
    raise ServiceError(
        f"{url} did not answer within {timeout_s:g} s; log {log_path}:\n{tail(log_path)}"
    )


def write_state(path: Path, data: Mapping[str, Any]) -> None:
    """Write the JSON state file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's content, or ``None`` when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
