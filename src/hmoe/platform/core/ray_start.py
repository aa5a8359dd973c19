"""Starting Ray for one hmoe process: a private local Ray, unless told to join a cluster.

``ray.init()`` without an address joins the latest cluster ``ray start`` started on the
machine (the address file in Ray's temp dir), so an independent ``hmoe train`` would quietly run
inside someone else's cluster. ``start_ray`` therefore starts a Ray of its own
(``address="local"``) unless ``RAY_ADDRESS`` names a cluster to join.

Starting several local Rays at once on a small machine makes each raylet slow to register
with its GCS; past Ray's fixed 30 s wait ``ray.init`` gives up with "The current node timed out
during startup" (and past 60 s, with the dashboard's log). Local starts therefore take turns
under a machine-wide file lock, and a start that ran out of time anyway (a machine busy
training) is retried after the processes of the failed attempt (this process's new children:
its GCS, raylet, dashboard) are stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path

from hmoe.platform.core.host import LOOPBACK, file_lock, free_port

__all__ = [
    "RAY_ADDRESS_ENV",
    "RAY_BUILTIN_RESOURCES",
    "api_server_env",
    "dashboard_url",
    "start_ray",
]

RAY_ADDRESS_ENV = "RAY_ADDRESS"
START_ATTEMPTS = 3
HTTP_SCHEMES = ("http://", "https://")
# Ray's messages for a start that ran out of time on a busy machine: the raylet did not
# register within 30 s, or the dashboard did not come up within 60 s (or lost its port)
STARTUP_FAILURES = ("timed out during startup", "dashboard.log")
_LOG = logging.getLogger(__name__)
# read by Ray's State API clients in every worker before they search the machine for a Ray
RAY_API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def dashboard_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def api_server_env(dashboard_port: int) -> dict[str, str]:
    """What a Ray's workers must inherit so that Train V2's placement-group cleaner reaches this
    Ray's State API instead of scanning the machine (it gives up when it finds several Rays)."""
    return {RAY_API_SERVER_ENV: dashboard_url(dashboard_port)}


def _start_lock_path() -> Path:
    # machine-wide (not under RAY_TMPDIR): processes with different Ray temp dirs still
    # compete for the same CPUs while their Rays start
    return Path(tempfile.gettempdir()) / f"hmoe-ray-start-{os.getuid()}.lock"


def _children() -> set[int]:
    """The pids of this process's children (Linux /proc; empty elsewhere)."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == me:  # field 4 of stat, the parent pid
            found.add(int(stat.parent.name))
    return found


def _stop(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start_ray(num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; returns whether this call connected it.

    It joins the cluster ``RAY_ADDRESS`` names, else starts a private local Ray of ``num_cpus``
    logical CPUs (``None``: the machine's), with its dashboard, whose State API Train V2 polls.
    """
    import ray

    if ray.is_initialized():
        return False
    target = os.environ.get(RAY_ADDRESS_ENV)
    if target and target.startswith(HTTP_SCHEMES):
        raise ValueError(
            f"RAY_ADDRESS={target} is a dashboard (Jobs API) address, which hmoe submit takes; "
            "to run on that cluster from here set RAY_ADDRESS to its GCS address HOST:PORT "
            "(hmoe cluster status prints it)"
        )
    if target:
        ray.init(address=target, configure_logging=False)
        return True
    with file_lock(_start_lock_path()):
        for attempt in range(1, START_ATTEMPTS + 1):
            # Without api_server_env the placement groups of ASHA-stopped trials stay reserved
            # whenever another Ray runs on the machine, and later trials starve.
            dashboard_port = free_port()
            before = _children()
            try:
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    include_dashboard=True,
                    dashboard_host=LOOPBACK,
                    dashboard_port=dashboard_port,
                    runtime_env={"env_vars": api_server_env(dashboard_port)},
                    configure_logging=False,
                )
                return True
            except Exception as err:  # Ray raises a bare Exception for the startup timeout
                ray.shutdown()
                # the half-started node is not registered with ray, so shutdown leaves it
                _stop(_children() - before)
                if not any(t in str(err) for t in STARTUP_FAILURES) or attempt == START_ATTEMPTS:
                    raise
                _LOG.warning("local Ray start %d failed on a busy machine; trying again", attempt)
    return False  # unreachable: the last attempt returns or raises
