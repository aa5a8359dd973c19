"""Writing a prepared directory: the output check, vocabulary files, the manifest, the rename.

``check_out`` runs before anything is read or written: ``out_dir`` is replaced as a whole, so it
must be absent, empty or a prepared dataset (any other directory only with ``overwrite``), and
it may never be the current directory, one of its parents, or hold the spec or an input.

A run writes into ``.<name>.tmp-<pid>-<random>`` beside ``out_dir`` and renames it at the end,
so a prepared directory without a complete manifest never exists. ``commit`` first moves an
existing ``out_dir`` aside to ``.<name>.old-<pid>-<random>``; the next run removes what killed
runs (their process is gone) left: temporary directories, and moved-aside outputs, which are
put back when the kill came between the two renames (``out_dir`` is then missing).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from hmoe import __version__
from hmoe.platform.core import storage
from hmoe.platform.data import stats as pstats
from hmoe.platform.data.encode import output_columns
from hmoe.platform.data.spec import SPLITS, DatasetSpec, TableSpec, label_column, resolve_path
from hmoe.schema import MANIFEST

__all__ = [
    "MANIFEST_VERSION",
    "build_manifest",
    "check_out",
    "check_remote_out",
    "clean_leftovers",
    "commit",
    "is_prepared",
    "label_warnings",
    "make_tmp",
    "write_vocab_files",
]

LOG = logging.getLogger(__name__)
MANIFEST_VERSION = 1
_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"
_GLOB_CHARS = "*?["
_NAMES_SHOWN = 3  # entries named in the refusal of a non-empty directory


def check_out(
    out: Path, spec: DatasetSpec, base: Path, spec_path: Path | None, *, overwrite: bool
) -> None:
    """Refuse an ``out`` (resolved) whose replacement would delete what ``prepare`` did not write.

    Raises ``ValueError`` (one line) when ``out`` is or holds the current directory, the spec
    file or an input (never replaced, even with ``overwrite``), when it is not a directory, or
    when it is a non-empty directory without a prepared dataset's manifest and ``overwrite`` is
    off.
    """
    for what, path in _protected(spec, base, spec_path):
        real = path.resolve()
        if real == out or real.is_relative_to(out):
            relation = "is" if real == out else "holds"
            raise ValueError(
                f"refusing to replace {out}: it {relation} {what} ({real}), which prepare "
                "never deletes, not even with --overwrite: choose another output directory"
            )
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is not a directory: choose another output directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or is_prepared(out) or overwrite:
        return
    names = ", ".join(entries[:_NAMES_SHOWN]) + (", ..." if len(entries) > _NAMES_SHOWN else "")
    raise ValueError(
        f"{out} is not empty and not a prepared dataset ({len(entries)} entries: {names}; no "
        f"hmoe {MANIFEST}): choose another output directory, or pass --overwrite "
        "(overwrite=True in Python) to replace it"
    )


def check_remote_out(out: str, *, overwrite: bool) -> None:
    """The ``check_out`` of an ``s3://`` prefix: its bucket must be reachable, and a prefix that
    holds objects but no prepared dataset's manifest is replaced only with ``overwrite``."""
    storage.check_reachable(out)
    entries = storage.list_names(out)
    if not entries or overwrite or MANIFEST in entries:
        return
    names = ", ".join(entries[:_NAMES_SHOWN]) + (", ..." if len(entries) > _NAMES_SHOWN else "")
    raise ValueError(
        f"{out} is not empty and not a prepared dataset ({len(entries)} entries: {names}; no "
        f"hmoe {MANIFEST}): choose another prefix, or pass --overwrite to replace it"
    )


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest written by ``prepare`` (any format version)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("format_version"), int)
        and "hmoe_version" in manifest
    )


def _protected(spec: DatasetSpec, base: Path, spec_path: Path | None) -> list[tuple[str, Path]]:
    """``(what, path)`` that an output directory must neither be nor hold."""
    out = [("the current directory", Path.cwd())]
    if spec_path is not None:
        out.append(("the spec file", spec_path))
    tables: list[tuple[str, TableSpec]] = [("log", spec.log)]
    tables += [(f"side_tables[{i}].table", s.table) for i, s in enumerate(spec.side_tables)]
    tables += [
        (f"sequences[{i}].behaviour_log.table", q.behaviour_log.table)
        for i, q in enumerate(spec.sequences)
        if q.behaviour_log is not None
    ]
    for key, table in tables:
        for written in table.paths:
            path = resolve_path(written, base)
            what = f"the input {written!r} of {key}.paths"
            if any(ch in str(path) for ch in _GLOB_CHARS):
                # the files it matches (as the reader, which skips folders) and the folder
                # above its first wildcard
                out += [(what, Path(p)) for p in glob.glob(str(path)) if Path(p).is_file()]
                fixed = itertools.takewhile(
                    lambda part: not any(c in part for c in _GLOB_CHARS), path.parts
                )
                out.append((what, Path(*fixed)))
            else:
                out.append((what, path))
    return out


def make_tmp(out: Path) -> Path:
    """A fresh temporary directory beside ``out`` named after this process."""
    tmp = out.parent / f".{out.name}{_TMP_MARK}{_tag()}"
    tmp.mkdir()
    return tmp


def _tag() -> str:
    """``<pid>-<random>``: the process that made a temporary or moved-aside directory."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_vocab_files(tmp: Path, vocabs: dict) -> None:
    import pyarrow.parquet as pq

    for name, vocab in vocabs.items():
        if len(vocab.keys):
            (tmp / "vocab").mkdir(exist_ok=True)
            pq.write_table(
                pa.table({"value": pa.array(vocab.keys.tolist(), pa.string())}),
                tmp / "vocab" / f"{name}.parquet",
            )


def build_manifest(
    spec: DatasetSpec, totals: dict, train: dict, vocabs: dict, records: list[dict]
) -> dict[str, Any]:
    per_split = {split: sum(r["rows"] for r in records if r["split"] == split) for split in SPLITS}
    written = sum(per_split.values())
    quarantined = {reason: int(n) for reason, n in sorted(totals["reasons"].items())}
    assert totals["read"] == written + sum(quarantined.values()), "rows lost in the pipeline"
    for split in SPLITS:
        counted = {c["rows"] for c in train["label_counts"][split].values()}
        assert counted <= {per_split[split]}, f"label counts disagree with the {split} shards"
    shards = {
        split: [
            {k: r[k] for k in ("path", "rows", "sha256")} for r in records if r["split"] == split
        ]
        for split in SPLITS
    }
    digest = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()
    schema = pstats.feature_schema(spec, vocabs, train)
    return {
        "format_version": MANIFEST_VERSION,
        "hmoe_version": __version__,
        "name": spec.name,
        "spec": spec.to_dict(),
        "spec_hash": spec.config_hash(),
        "dataset_hash": digest[:16],
        "feature_schema": schema.to_dict(),
        "columns": output_columns(spec),
        "label_columns": {label.task: label_column(label.task) for label in spec.labels},
        "vocab_sizes": {name: v.size for name, v in vocabs.items()},
        "vocabularies": {name: v.to_dict() for name, v in vocabs.items()},
        "rows": {
            "read": int(totals["read"]),
            "written": written,
            "quarantined": sum(quarantined.values()),
            **per_split,
        },
        "quarantined_by_reason": quarantined,
        "positive_rate": train["positive_rate"],
        "label_counts": train["label_counts"],
        "warnings": label_warnings(train["label_counts"], per_split),
        "shards": shards,
    }


def label_warnings(label_counts: dict, rows: dict[str, int]) -> list[str]:
    """One line per empty split and per task with one class in a split: a model trained or
    evaluated on it learns or measures nothing for that task (AUC is undefined)."""
    out = []
    for split in SPLITS:
        if not rows[split]:
            out.append(f"split {split!r} is empty")
            continue
        for task, counts in label_counts[split].items():
            n, positives = counts["rows"], counts["positives"]
            if positives in (0, n):
                out.append(
                    f"task {task!r} has one class in split {split!r} "
                    f"({positives:,} positives of {n:,} rows)"
                )
    return out


def clean_leftovers(out: Path) -> None:
    """Remove what killed runs for ``out`` left beside it (their process is gone).

    Temporary directories are deleted. A moved-aside output is put back when ``out`` is
    missing (the run was killed between ``commit``'s two renames), else deleted.
    """
    tmp_prefix, old_prefix = f".{out.name}{_TMP_MARK}", f".{out.name}{_OLD_MARK}"
    for path in sorted(out.parent.iterdir()):
        if path.name.startswith(tmp_prefix) and _owner_gone(path.name[len(tmp_prefix) :]):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(old_prefix) and _owner_gone(path.name[len(old_prefix) :]):
            if not out.exists() and not out.is_symlink():
                LOG.warning("prepare: restoring %s from %s (a killed run's leftover)", out, path)
                path.rename(out)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _owner_gone(tag: str) -> bool:
    """Whether the process named by a ``<pid>-<random>`` tag is gone (an untagged name is
    treated as gone: only ``commit`` and ``make_tmp`` make these names)."""
    pid, _, rest = tag.partition("-")
    if not (pid.isdigit() and rest):
        return True
    return not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def commit(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` (a rename; an old ``out`` is moved aside first, under a name
    carrying this process's id so that ``clean_leftovers`` can restore it if this process is
    killed before ``tmp`` is in place)."""
    if out.exists():
        old = out.parent / f".{out.name}{_OLD_MARK}{_tag()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
