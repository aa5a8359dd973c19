"""``hmoe cluster up | down | status``: a local Ray head on 127.0.0.1 with the Jobs API."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from hmoe.jobs.services.cluster import ClusterConfig, default_state_dir

DEFAULTS = ClusterConfig()
EXIT_SERVICE_ERROR = 1
EXIT_USER_ERROR = 2


def reports_errors(handler: Callable[[argparse.Namespace], int]) -> Callable:
    """Print a service, connection or job error as one line and exit 1 (no traceback); an
    unknown job, or an action its state refuses, is the user's to fix: exit 2."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        from hmoe.jobs.api import JobError, JobNotFoundError, JobStateError
        from hmoe.jobs.services.processes import ServiceError

        try:
            return handler(args)
        except (JobNotFoundError, JobStateError) as err:
            print(f"hmoe {args.command}: error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except (ServiceError, JobError, ConnectionError, TimeoutError) as err:
            print(f"hmoe {args.command}: error: {err}", file=sys.stderr)
            return EXIT_SERVICE_ERROR

    return wrapped


def add_state_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the head/server records live (default: $HMOE_STATE_DIR or ~/.hmoe)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cluster", help="start, stop or inspect a local Ray head")
    sub = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start a Ray head with the dashboard on 127.0.0.1")
    up.add_argument("--port", type=int, default=DEFAULTS.port, help="GCS port (0: a free one)")
    up.add_argument(
        "--dashboard-port",
        type=int,
        default=DEFAULTS.dashboard_port,
        help="dashboard / Jobs API port (0: a free one)",
    )
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs to advertise")
    up.add_argument("--num-gpus", type=int, default=None, help="GPUs to advertise")
    up.add_argument("--token-file", default=None, help="auth token (default ~/.ray/auth_token)")
    up.add_argument(
        "--join",
        default=None,
        metavar="ADDRESS",
        help="join the head at this GCS address (HOST:PORT) as a worker node instead",
    )
    up.add_argument(
        "--resources",
        type=json.loads,
        default=None,
        help="custom resources the node advertises, as JSON: '{\"worker_node\": 1}'",
    )
    up.set_defaults(func=run_up)
    down = sub.add_parser(
        "down", help="stop the Ray head and worker node started by `hmoe cluster up`"
    )
    down.set_defaults(func=run_down)
    status = sub.add_parser("status", help="show the head's address, processes and resources")
    status.set_defaults(func=run_status)
    for action in (up, down, status):
        add_state_dir_argument(action)


def _state_dir(args: argparse.Namespace) -> Path:
    return args.state_dir or default_state_dir()


@reports_errors
def run_up(args: argparse.Namespace) -> int:
    from hmoe.jobs.services.cluster import start_head

    cfg = ClusterConfig(
        port=args.port,
        dashboard_port=args.dashboard_port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        token_file=args.token_file,
        join=args.join,
        resources=args.resources or {},
    )
    if args.join is not None:
        from hmoe.jobs.services.cluster import start_node

        print(f"joining a Ray worker node to {args.join} ...", flush=True)
        print("\n".join(start_node(cfg, _state_dir(args)).describe()))
        return 0
    print("starting a Ray head on 127.0.0.1 (takes ~20 s) ...", flush=True)
    info = start_head(cfg, _state_dir(args))
    print("\n".join(info.describe()))
    return 0


@reports_errors
def run_down(args: argparse.Namespace) -> int:
    from hmoe.jobs.services.cluster import stop_head, stop_node

    node = stop_node(_state_dir(args))
    if node is not None:
        print(f"stopped the Ray worker node (pid {node.pid})")
    info = stop_head(_state_dir(args))
    print("no Ray head recorded" if info is None else f"stopped the Ray head (pid {info.pid})")
    return 0


@reports_errors
def run_status(args: argparse.Namespace) -> int:
    from hmoe.jobs.services.cluster import head_status

    status = head_status(_state_dir(args))
    if status is None:
        print(f"no Ray head recorded in {_state_dir(args)} (start one: hmoe cluster up)")
        return 1
    print("\n".join(status["head"].describe()))
    print(f"  processes: {status['processes']}, dashboard up: {status['dashboard_up']}")
    if not status["dashboard_up"]:
        return 1
    from hmoe.jobs.api import JobClient

    resources = JobClient(state_dir=_state_dir(args)).resources()
    shown = {k: v for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory")}
    print("  resources: " + ", ".join(f"{k} {v:g}" for k, v in shown.items()))
    return 0
