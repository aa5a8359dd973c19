"""Every command shown in README.md and docs/*.md runs, as written, in a fresh process.

Each scenario runs the blocks of one or more doc sections in order in one working directory, one
``bash -c`` per command, with an environment that inherits no Ray or MLflow state of the test
session: no ``RAY_*``, ``MLFLOW_*`` or ``HMOE_*`` variables, a Ray temp dir and a ``HOME`` of its
own (``~/.hmoe``, ``~/.ray/auth_token``, ``~/hmoe-data`` land there), the venv's ``bin`` first on
``PATH`` and this checkout on ``PYTHONPATH``. The working directory links ``src`` to the
checkout, so the paths the docs use (``src/hmoe/...``) resolve, and the real data is reached
through ``HMOE_DATA_ROOT`` as a reader sets it. A placeholder (``RUN_ID``, ``ID``) is filled from
an earlier command's output by ``PLACEHOLDERS``; one the table does not know fails the test.

``test_every_doc_command_is_run_or_exempt`` keeps the docs and this module in step: a command
that no scenario runs and no exemption names fails it. A command the same as one a scenario runs
(comments aside), e.g. docs/cluster.md repeating the README's cluster commands, counts as run.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import data_root
from tests.docs_blocks import REPO_ROOT, Block, all_blocks, command_key, parse_doc

VENV_BIN = Path(sys.executable).absolute().parent
COMMAND_TIMEOUT_S = 600

#: placeholder -> where its value is printed by an earlier command of the same scenario
PLACEHOLDERS: dict[str, re.Pattern[str]] = {
    "RUN_ID": re.compile(r"^MLflow run id: (\w+)", re.M),  # hmoe train
    "ID": re.compile(r"^submitted (\S+) to ", re.M),  # hmoe submit
}
#: an upper-case word standing alone or inside a URL, not $VAR, ${VAR}, VAR=... or a file name
PLACEHOLDER = re.compile(r"(?<![\w${.-])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?![\w=.}])|<[^<>|]+>")

#: what a command prints that the docs promise: command pattern -> output pattern
EXPECTED_OUTPUT: dict[str, str] = {
    r"hmoe data synth ": r"wrote [\d,]+ impressions",
    r"hmoe data prepare ": r"(?m)^prepared \S+ -> ",
    r"hmoe train ": r"(?m)^MLflow run id: \w+",
    r"hmoe tune ": r"(?m)^best trial \w+",
    r"hmoe analyze ": r"(?m)^collapse\w*: \S+\.png",
    r"hmoe cluster up ": r"dashboard/Jobs: +http://127\.0\.0\.1:8265",
    r"hmoe ui$": r"http://127\.0\.0\.1:5000",
    r"hmoe submit ": r"(?m)^job \S+: SUCCEEDED",
    r"hmoe jobs status ": r": SUCCEEDED",
    r"hmoe jobs result ": r"best run \w+",
    r"hmoe demo ": r"(?m)^registered model: ",
}


@dataclass(frozen=True)
class Scenario:
    sections: tuple[tuple[str, str], ...]  # (doc, section heading), run in this order
    ports: tuple[int, ...] = ()  # fixed ports the commands as written listen on
    needs_data: bool = False
    # MLFLOW_TRACKING_URI names a store outside the working dir, as a reader may have exported it;
    # every command must follow it (and none may fall back to ./mlflow.db)
    tracking_env: bool = False


CLUSTER_PORTS = (6379, 8265, 5000)  # Ray GCS, dashboard/Jobs API, MLflow server by default
SCENARIOS: dict[str, Scenario] = {
    "usage": Scenario(sections=(("README.md", "Using it"),), needs_data=True, tracking_env=True),
    "configs": Scenario(sections=(("README.md", "Configs"),)),
    "cluster": Scenario(sections=(("README.md", "Running on a Ray cluster"),), ports=CLUSTER_PORTS),
}

#: commands no scenario runs, each with the reason; keep it short and true
EXEMPT_COMMANDS: dict[str, str] = {
    "make test": "it is the CI: lint and this whole test suite",
    "make demo": "the full demo on ml-100k takes ~6 min and refreshes .venv; the same code at "
    "tiny size runs as `hmoe demo --synthetic ...` (next line)",
    "hmoe demo --synthetic --rows 3000 --trials 2 --epochs 1": "run as written in a fresh process "
    "by tests/jobs/test_demo.py::test_tiny_demo_end_to_end, which also checks what it prints",
    "hmoe jobs resume ID": "needs a stopped search; tests/jobs/test_submit.py::"
    "test_a_followed_job_survives_ctrl_c_is_stopped_then_resumed stops one and resumes it "
    "with this command",
}
#: whole blocks no scenario runs, by (doc, section, language), each with the reason
EXEMPT_BLOCKS: dict[tuple[str, str, str], str] = {
    ("docs/protocols.md", "Q1b: ml-100k, per-user temporal split (returning users)", "bash"): (
        "the report's Q1b table: tens of minutes of training on 2 cores; "
        "tests/test_bench_peers.py checks the peers' data export row for row against the split"
    ),
    ("README.md", "Your own search space", "python"): "the contents of the shipped example "
    "file; tests/search_spaces/test_custom.py loads it as FILE.py:FUNCTION, samples and applies it",
    ("README.md", "Your own search space", "bash"): "a search like the usage scenario's `hmoe "
    "tune` (minutes); test_custom.py runs `hmoe tune --space FILE.py:FUNCTION` up to its check "
    "and the smoke job (tests/jobs) searches a search.space mapping end to end",
    ("docs/cluster.md", "Ports, bindings and authentication", "bash"): "a second MLflow server "
    "(port 5000 is the cluster scenario's); tests/jobs/test_ui_auth.py runs `hmoe ui --auth` and "
    "checks 401 without the user, 200 with the printed password file, and the client exports",
    ("docs/cluster.md", "3. Submit and follow", "python"): "a second smoke job (~2.5 min) through "
    "the Python API; tests/jobs/test_submit.py runs hmoe.jobs.submit, wait and result",
    ("docs/cluster.md", "6. A multi-node cluster with object storage", "bash"): (
        "needs an S3 bucket and worker machines (BUCKET, HEAD_IP); tests/jobs/test_multinode.py "
        "runs these commands on one machine against a moto S3 server and a second node"
    ),
    ("docs/cluster.md", "5. The same commands against a remote multi-node cluster", "bash"): (
        "needs a remote cluster and MLflow server (HEAD_IP, MLFLOW_HOST); the cluster scenario "
        "runs the same submit and jobs commands against the local head"
    ),
}


def scenario_blocks(scenario: Scenario, blocks: list[Block] | None = None) -> list[Block]:
    blocks = all_blocks() if blocks is None else blocks
    wanted = set(scenario.sections)
    found = [b for b in blocks if b.runnable and (b.doc, b.section) in wanted]
    return sorted(found, key=lambda b: (scenario.sections.index((b.doc, b.section)), b.line))


def placeholders(command: str) -> list[str]:
    text = command if "\n" in command else command.split(" #", 1)[0]
    return PLACEHOLDER.findall(text)


def fill(command: str, values: dict[str, str]) -> str:
    for name in placeholders(command):
        if name not in PLACEHOLDERS:
            pytest.fail(f"unknown placeholder {name!r} in {command!r}; add it to PLACEHOLDERS")
        if name not in values:
            pytest.fail(f"placeholder {name} in {command!r}: no earlier command printed it")
        command = re.sub(rf"\b{name}\b", lambda _m, v=values[name]: v, command)
    return command


def fresh_env(home: Path, ray_tmp: Path) -> dict[str, str]:
    """The test process's environment without its Ray, MLflow and hmoe state."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAY_", "MLFLOW_", "HMOE_")) and key not in {"PYTHONPATH", "HOME"}
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(REPO_ROOT / "src"),
        HOME=str(home),
        RAY_TMPDIR=str(ray_tmp),
        RAY_USAGE_STATS_ENABLED="0",
        HMOE_DATA_ROOT=str(data_root()),
    )
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A working directory where the docs' relative paths resolve, and its fresh environment."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "src").symlink_to(REPO_ROOT / "src")
    # Ray's socket paths must stay short: a temp dir under /tmp, not under pytest's tmp_path
    with tempfile.TemporaryDirectory(prefix="hmoe-docs-ray-", dir="/tmp") as ray_tmp:
        yield work, fresh_env(home, Path(ray_tmp))


def run_command(command: str, cwd: Path, env: dict[str, str]) -> str:
    if "\n" in command:  # a Python snippet: a file of its own, run by the venv's python
        (cwd / "snippet.py").write_text(command + "\n")
        argv = ["python", "snippet.py"]
    else:
        argv = ["bash", "-o", "pipefail", "-c", command]
    # a session of its own: a command that runs too long is stopped with all it started
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"`{command}` ran over {COMMAND_TIMEOUT_S} s:\n{(stdout + stderr)[-4000:]}")
    output = stdout + stderr
    assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{output[-4000:]}"
    for shape, pattern in EXPECTED_OUTPUT.items():
        if re.match(shape, command_key(command)):
            assert re.search(pattern, stdout), (
                f"`{command}` did not print {pattern!r}:\n{output[-4000:]}"
            )
    return stdout


def run_scenario(name: str, work: Path, env: dict[str, str]) -> None:
    scenario = SCENARIOS[name]
    if scenario.needs_data and not data_root().is_dir():
        pytest.skip(f"real data not found at {data_root()} (set HMOE_DATA_ROOT)")
    for port in scenario.ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port}, which the commands as written use, is taken here")
    if scenario.tracking_env:
        store = work.parent / "store"
        store.mkdir()
        env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    blocks = scenario_blocks(scenario)
    assert blocks, f"scenario {name}: no runnable block under {scenario.sections}"
    values: dict[str, str] = {}
    for block in blocks:
        for command in block.commands():
            stdout = run_command(fill(command, values), work, env)
            if scenario.tracking_env:
                assert not (work / "mlflow.db").exists(), (
                    f"`{command}` ignored MLFLOW_TRACKING_URI: it made ./mlflow.db"
                )
            for placeholder, pattern in PLACEHOLDERS.items():
                if found := pattern.findall(stdout):
                    values[placeholder] = found[-1]
    if scenario.tracking_env:
        assert (work.parent / "store" / "mlflow.db").is_file()


def test_configs_snippet(workdir):
    run_scenario("configs", *workdir)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1800)  # six commands, five start a Ray: minutes each on a loaded box
def test_usage_commands(workdir):
    work, env = workdir
    run_scenario("usage", work, env)
    assert list((work / "plots").glob("*.png")), "hmoe analyze --out plots/ wrote no plot"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_cluster_commands(workdir):
    work, env = workdir
    try:
        run_scenario("cluster", work, env)
    finally:  # whatever failed, stop what the commands started (no-ops when already stopped)
        for command in ("hmoe ui --stop", "hmoe cluster down"):
            subprocess.run(
                ["bash", "-c", command], cwd=work, env=env, capture_output=True, timeout=120
            )


def test_every_doc_command_is_run_or_exempt():
    blocks = all_blocks()
    run_blocks = [b for s in SCENARIOS.values() for b in scenario_blocks(s, blocks)]
    run_keys = {command_key(c) for b in run_blocks for c in b.commands()}
    missing, used_commands, used_blocks = [], set(), set()
    for block in blocks:
        if not block.runnable or block in run_blocks:
            continue
        if (block.doc, block.section, block.lang) in EXEMPT_BLOCKS:
            used_blocks.add((block.doc, block.section, block.lang))
            continue
        for command in block.commands():
            key = command_key(command)
            if key in EXEMPT_COMMANDS:
                used_commands.add(key)
            elif key not in run_keys:  # the same command is run by a scenario
                missing.append(f"{block.where}: {command}")
    assert not missing, "commands in the docs that no test runs (add them to a scenario, or "
    "exempt them with the reason):\n" + "\n".join(missing)
    for name, scenario in SCENARIOS.items():
        assert scenario_blocks(scenario, blocks), (
            f"scenario {name}: no block under {scenario.sections}"
        )
    assert set(EXEMPT_COMMANDS) == used_commands, (
        f"stale exemptions: {set(EXEMPT_COMMANDS) - used_commands}"
    )
    assert set(EXEMPT_BLOCKS) == used_blocks, (
        f"stale exemptions: {set(EXEMPT_BLOCKS) - used_blocks}"
    )


def test_placeholders_are_filled_from_the_table_or_fail():
    assert placeholders("hmoe jobs logs ID --follow  # ID: the id") == ["ID"]
    assert placeholders("hmoe analyze RUN_ID --out plots/") == ["RUN_ID"]
    assert placeholders("HMOE_X=1 hmoe train --data $HMOE_DATA_ROOT/README.md") == []
    assert fill("hmoe jobs status ID", {"ID": "smoke-1"}) == "hmoe jobs status smoke-1"
    with pytest.raises(pytest.fail.Exception, match="unknown placeholder 'HEAD_IP'"):
        fill("hmoe jobs list --address http://HEAD_IP:8265", {})
    with pytest.raises(pytest.fail.Exception, match="no earlier command printed it"):
        fill("hmoe analyze RUN_ID", {})


def test_blocks_are_split_into_commands(tmp_path: Path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "# Top\n## Run\n```bash\na --x \\\n    --y  # note\n# a comment\n\nb\n```\n"
        "* item\n  ```bash\n  c\n  ```\n```text\nout\n```\n"
    )
    blocks = parse_doc(doc, root=tmp_path)
    assert [(b.section, b.lang, b.commands()) for b in blocks] == [
        ("Run", "bash", ["a --x --y  # note", "b"]),
        ("Run", "bash", ["c"]),
        ("Run", "text", ["out"]),
    ]
    assert command_key(blocks[0].commands()[0]) == "a --x --y"
    doc.write_text("```\nmake demo\n```\n")
    with pytest.raises(ValueError, match="without a language"):
        parse_doc(doc, root=tmp_path)
