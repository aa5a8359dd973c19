"""``hmoe ui``: an MLflow tracking server (sqlite + proxied artifacts) on 127.0.0.1."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands.cluster import add_state_dir_argument, reports_errors
from hmoe.jobs.services.cluster import default_state_dir
from hmoe.jobs.services.mlflow_server import MlflowServerConfig

DEFAULTS = MlflowServerConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ui", help="start (or --stop) the MLflow tracking server")
    parser.add_argument("--port", type=int, default=DEFAULTS.port, help="port on 127.0.0.1")
    parser.add_argument(
        "--root",
        default=DEFAULTS.root,
        help="folder of the sqlite store and the artifacts (default: ./hmoe-mlflow)",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="require a user and password (MLflow's basic-auth app); the admin is "
        f"'{DEFAULTS.admin_user}'",
    )
    parser.add_argument(
        "--password-file",
        default=None,
        help="the admin's password, read at the first --auth start (default: ROOT/admin-password, "
        "generated with a random password when missing)",
    )
    parser.add_argument(
        "--artifacts-destination",
        default=None,
        help="where the server stores the artifacts it proxies, e.g. s3://bucket/mlflow "
        "(default: ROOT/artifacts)",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--stop", action="store_true", help="stop the server started by hmoe ui")
    action.add_argument("--status", action="store_true", help="show the recorded server")
    add_state_dir_argument(parser)
    parser.set_defaults(func=run)


@reports_errors
def run(args: argparse.Namespace) -> int:
    from hmoe.jobs.services import mlflow_server

    state_dir = args.state_dir or default_state_dir()
    if args.stop:
        info = mlflow_server.stop_server(state_dir)
        print(
            "no MLflow server recorded"
            if info is None
            else f"stopped the MLflow server (pid {info.pid}, {info.url})"
        )
        return 0
    if args.status:
        status = mlflow_server.server_status(state_dir)
        if status is None:
            print(f"no MLflow server recorded in {state_dir} (start one: hmoe ui)")
            return 1
        print("\n".join(status["server"].describe()))
        print(f"  processes: {status['processes']}, healthy: {status['healthy']}")
        return 0 if status["healthy"] else 1
    cfg = MlflowServerConfig(
        port=args.port,
        root=args.root,
        use_auth=args.auth,
        password_file=args.password_file,
        artifacts_destination=args.artifacts_destination,
    )
    print("starting the MLflow server (takes ~15 s) ...", flush=True)
    info = mlflow_server.start_server(cfg, state_dir)
    print("\n".join(info.describe()))
    print(
        f"open {info.url} and choose 'Model training' (top left) for the runs; stop it with "
        "`hmoe ui --stop`"
    )
    return 0
