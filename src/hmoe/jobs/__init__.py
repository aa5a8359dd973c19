"""Entry points: the ``hmoe`` CLI, presets and job specs; thin layers over the Python API.

The job API (``hmoe.jobs.submit``, ``resume``, ``get_job``, ``list_jobs``, ``Job``,
``JobResult``, ``JobProgress``, ``JobError`` and its kinds, ``JobSpec``, ``load_job``) loads on
first use, so importing ``hmoe.jobs`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Job",
    "JobClient",
    "JobError",
    "JobNotFoundError",
    "JobProgress",
    "JobResult",
    "JobSpec",
    "JobStateError",
    "get_job",
    "list_jobs",
    "load_job",
    "resume",
    "submit",
]

_LAZY = {
    "Job": "hmoe.jobs.api",
    "JobClient": "hmoe.jobs.api",
    "JobError": "hmoe.jobs.api",
    "JobNotFoundError": "hmoe.jobs.api",
    "JobProgress": "hmoe.jobs.api",
    "JobResult": "hmoe.jobs.api",
    "JobStateError": "hmoe.jobs.api",
    "resume": "hmoe.jobs.api",
    "get_job": "hmoe.jobs.api",
    "list_jobs": "hmoe.jobs.api",
    "submit": "hmoe.jobs.api",
    "JobSpec": "hmoe.jobs.spec",
    "load_job": "hmoe.jobs.spec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hmoe.jobs' has no attribute {name!r}")
