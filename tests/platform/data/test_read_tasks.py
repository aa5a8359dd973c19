"""Read tasks: consecutive fragments grouped into blocks of bounded size."""

from __future__ import annotations

import importlib

from hmoe.platform.data.prepare import read_tasks
from hmoe.platform.data.tables import UNKNOWN_ROWS

# the package re-exports the function ``prepare`` under the module's name
prepare_module = importlib.import_module("hmoe.platform.data.prepare")


def _fragments(n: int, rows: int) -> list[dict]:
    return [{"row_offset": i, "rows": rows} for i in range(n)]


def _flat(tasks: list[dict]) -> list[dict]:
    return [f for task in tasks for f in task["fragments"]]


def test_every_fragment_once_in_order_and_blocks_bounded(monkeypatch) -> None:
    monkeypatch.setattr(prepare_module, "READ_TASK_ROWS", 400)
    monkeypatch.setattr(prepare_module, "MIN_READ_TASKS", 8)
    frags = _fragments(100, 100)
    tasks = read_tasks(frags, batch_rows=50)
    assert _flat(tasks) == frags
    assert [len(t["fragments"]) for t in tasks] == [4] * 25


def test_small_inputs_keep_enough_tasks(monkeypatch) -> None:
    monkeypatch.setattr(prepare_module, "READ_TASK_ROWS", 400)
    monkeypatch.setattr(prepare_module, "MIN_READ_TASKS", 8)
    frags = _fragments(10, 100)  # 1000 rows: at most 125 rows per task, so one fragment each
    assert [len(t["fragments"]) for t in read_tasks(frags, batch_rows=50)] == [1] * 10
    assert read_tasks([], batch_rows=50) == []


def test_unknown_sizes_count_as_one_batch(monkeypatch) -> None:
    monkeypatch.setattr(prepare_module, "READ_TASK_ROWS", 100)
    monkeypatch.setattr(prepare_module, "MIN_READ_TASKS", 1)
    frags = _fragments(6, UNKNOWN_ROWS)
    tasks = read_tasks(frags, batch_rows=50)
    assert _flat(tasks) == frags
    assert [len(t["fragments"]) for t in tasks] == [2, 2, 2]
