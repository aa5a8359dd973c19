"""Writing a prepared directory: vocabulary files, the manifest, and the atomic rename.

A run writes into ``.<name>.tmp-<pid>-<random>`` beside ``out_dir`` and renames it at the end,
so a prepared directory without a complete manifest never exists; the temporary directories of
killed runs (their process is gone) are removed by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from hmoe import __version__
from hmoe.platform.data import stats as pstats
from hmoe.platform.data.encode import output_columns
from hmoe.platform.data.spec import SPLITS, DatasetSpec, label_column

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "build_manifest",
    "commit",
    "make_tmp",
    "remove_stale_tmp",
    "write_vocab_files",
]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_TMP_MARK = ".tmp-"


def make_tmp(out: Path) -> Path:
    """A fresh temporary directory beside ``out`` named after this process."""
    tmp = out.parent / f".{out.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


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
        "shards": shards,
    }


def remove_stale_tmp(out: Path) -> None:
    """Delete temporary directories of earlier runs for ``out`` whose process is gone."""
    for path in out.parent.glob(f".{out.name}{_TMP_MARK}*"):
        pid = path.name[len(f".{out.name}{_TMP_MARK}") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def commit(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` (a rename; an old ``out`` is moved aside first)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
