"""Entry points: the ``hmoe`` CLI, presets and job specs; thin layers over the Python API.

The job API (``hmoe.jobs.submit``, ``resume``, ``get_job``, ``list_jobs``, ``Job``,
``JobResult``, ``JobProgress``, ``JobError`` and its kinds, ``JobSpec``, ``load_job``: the
names of ``hmoe.jobs.api.__all__``) loads on first use, so importing ``hmoe.jobs`` (which every
``hmoe`` command does) stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_API = "hmoe.jobs.api"


def __getattr__(name: str) -> Any:
    # ``__all__`` too: ``from hmoe.jobs import *`` sees the API's own list. A submodule
    # (``from hmoe.jobs import entry``) is left to the import system, without loading the API
    submodule = importlib.util.find_spec(f"{__name__}.{name}") is not None
    if name == "__all__" or not (name.startswith("_") or submodule):
        api = importlib.import_module(_API)
        if name == "__all__":
            return list(api.__all__)
        if name in api.__all__:
            return getattr(api, name)
    raise AttributeError(f"module 'hmoe.jobs' has no attribute {name!r}")
