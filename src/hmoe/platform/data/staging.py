"""Raw tables in object storage: copied to a local folder before ``prepare`` reads them.

``prepare`` reads its inputs several times (the schema and label checks, the fragment plan, the
read tasks), by path, so an ``s3://`` entry of a table's ``paths`` (a file, or a prefix: every
object under it) is downloaded once into the run's staging folder and the spec is rewritten to
point there. Wildcards are not expanded on object storage: name a file or a prefix. A spec
read from object storage (``load_remote_spec``) has its relative paths anchored at its prefix.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

from hmoe.platform.core import storage
from hmoe.platform.data.spec import BehaviourLogSpec, DatasetSpec, SequenceSpec, load_spec
from hmoe.platform.data.spec_fields import TableSpec

__all__ = ["has_remote_inputs", "load_remote_spec", "stage"]

_GLOB_CHARS = "*?["
_ANCHORS = ("/", "~", "$")  # absolute, home- or environment-anchored local paths


def _tables(spec: DatasetSpec) -> list[TableSpec]:
    out = [spec.log, *(s.table for s in spec.side_tables)]
    return out + [q.behaviour_log.table for q in spec.sequences if q.behaviour_log is not None]


def has_remote_inputs(spec: DatasetSpec) -> bool:
    return any(storage.is_remote(p) for table in _tables(spec) for p in table.paths)


def load_remote_spec(uri: str) -> DatasetSpec:
    """The dataset spec at ``uri``, its relative table paths made URIs under its prefix."""
    prefix = uri.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory(prefix="hmoe-spec-") as folder:
        local = Path(folder) / uri.rsplit("/", 1)[1]
        local.write_bytes(storage.read_bytes(uri))
        spec = load_spec(local)

    def anchored(path: str) -> str:
        relative = not (storage.is_remote(path) or path.startswith(_ANCHORS))
        return storage.join(prefix, path) if relative else path

    return _map_paths(spec, anchored)


def stage(spec: DatasetSpec, folder: Path) -> DatasetSpec:
    """``spec`` with every ``s3://`` table path replaced by its local copy under ``folder``."""
    copies: dict[str, str] = {}  # one download per URI, however many tables name it

    def local(written: str) -> str:
        if storage.is_remote(written) and written not in copies:
            if any(ch in written for ch in _GLOB_CHARS):
                raise ValueError(
                    f"{written}: wildcards are not expanded on object storage; name a file "
                    "or a prefix (every object under it is read)"
                )
            copies[written] = str(storage.download(written, folder / str(len(copies))))
        return copies.get(written, written)

    return _map_paths(spec, local)


def _map_paths(spec: DatasetSpec, change: Callable[[str], str]) -> DatasetSpec:
    """``spec`` with ``change`` applied to every table path."""

    def mapped(table: TableSpec) -> TableSpec:
        return dataclasses.replace(table, paths=tuple(change(p) for p in table.paths))

    def behaviours(q: SequenceSpec) -> BehaviourLogSpec:
        assert q.behaviour_log is not None
        return dataclasses.replace(q.behaviour_log, table=mapped(q.behaviour_log.table))

    sides = tuple(dataclasses.replace(s, table=mapped(s.table)) for s in spec.side_tables)
    sequences = tuple(
        q if q.behaviour_log is None else dataclasses.replace(q, behaviour_log=behaviours(q))
        for q in spec.sequences
    )
    return dataclasses.replace(spec, log=mapped(spec.log), side_tables=sides, sequences=sequences)
