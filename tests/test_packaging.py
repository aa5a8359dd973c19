"""Packaging tripwires: the stdlib ``platform`` is never shadowed; the CLI lists every command."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from hmoe.jobs.cli import build_parser, main
from tests.conftest import REPO_ROOT

SUBCOMMANDS = [
    "data", "train", "tune", "analyze", "runs", "cluster", "ui", "submit", "jobs", "demo",
]  # fmt: skip


def test_stdlib_platform_not_shadowed():
    code = (
        "import hmoe, platform, hmoe.platform, pathlib, sys;"
        "assert platform.system();"
        "assert pathlib.Path(hmoe.platform.__file__).parent.parent == "
        "pathlib.Path(hmoe.__file__).parent;"
        "print(platform.system())"
    )
    # from the repo root, the place where a root-level platform/ would shadow the stdlib
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip()


def test_no_generic_top_level_packages_at_the_root():
    for name in ("platform", "models", "jobs", "search_spaces"):
        assert not (REPO_ROOT / name / "__init__.py").exists(), name
    spec = importlib.util.find_spec("platform")
    assert spec is not None and "site-packages" not in (spec.origin or "")
    assert Path(spec.origin).name == "platform.py"


def test_models_import_nothing_from_platform_or_jobs():
    models_dir = REPO_ROOT / "src" / "hmoe" / "models"
    offenders = [
        str(p.relative_to(REPO_ROOT))
        for p in models_dir.rglob("*.py")
        for line in p.read_text().splitlines()
        if line.lstrip().startswith(("import ", "from "))
        and ("hmoe.platform" in line or "hmoe.jobs" in line or "import ray" in line)
    ]
    assert offenders == []


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "hmoe.jobs.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in out, name
    assert len(build_parser()._subparsers._group_actions[0].choices) == len(SUBCOMMANDS)


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "prepare", "--help"],
        ["data", "synth", "--help"],
        ["data", "fetch", "--help"],
        ["train", "--help"],
        ["tune", "--help"],
        ["analyze", "--help"],
        ["cluster", "up", "--help"],
        ["cluster", "down", "--help"],
        ["cluster", "status", "--help"],
        ["ui", "--help"],
        ["submit", "--help"],
        ["jobs", "list", "--help"],
        ["jobs", "status", "--help"],
        ["jobs", "logs", "--help"],
        ["jobs", "stop", "--help"],
        ["demo", "--help"],
    ],
)
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: hmoe" in capsys.readouterr().out


def test_console_script_installed():
    script = Path(sys.executable).parent / "hmoe"
    assert script.exists(), "pip install -e . should install the hmoe console script"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("hmoe ")
