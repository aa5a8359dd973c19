"""The platform, in rooms with one purpose each: ``data`` (datasets and batches), ``training``
(one run), ``search`` (Tune + Optuna), ``tracking`` (MLflow), ``analysis`` (the paper's analyses)
on ``core`` (storage, failures, metrics, starting Ray). ``experiment`` is the run's config that
every room reads; ``api`` is the ``hmoe.train`` run, which composes the rooms.

Stored artifacts name modules by their path: a logged model's ``python_function`` flavor its
loader module, a model logged in the ``pickle`` format the class of its wrapper, a search's Tune
state its trial function. Those paths from before the rooms stay importable (``_OLD_PATHS``), as
aliases of the modules that hold the code now, so models and searches stored then still load.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

# module paths written into stored artifacts before the rooms -> where that code lives now
# ("old path": these old paths are meant; a tool rewriting module paths leaves them)
_OLD_PATHS = {
    "hmoe.platform.serving": "hmoe.platform.tracking.serving",  # old path
    "hmoe.platform.model_registry": "hmoe.platform.tracking.registry",  # old path
    "hmoe.platform.tune": "hmoe.platform.search.tune",  # old path
}


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the module it moved to: the same module object, so a pickled
    class or function resolves to the one in use. Consulted after the regular finders."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _OLD_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(_OLD_PATHS[spec.name])
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # the import system stamped the alias's spec on the module: give it back its own
        module.__spec__ = self._own_specs[module.__spec__.name]


if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
    sys.meta_path.append(_OldPathFinder())
