"""One-shot: import the records of the former JSON-lines store into the report's MLflow store.

A record of a preset is imported only when its stored ``model_hash`` is the hash its preset and
overrides give now (``common.trusted``); the others (no hash, or another one) are left out and
retrained by ``reproduce.py``. A record without a preset (an estimate, no model) is identified
by its key and imported. The imported runs are tagged ``report.loop = standalone`` (they were
trained by the same loop in-process, not through ``hmoe.train``). Prints what it did per
section, then writes the store's export (``docs/results/runs/``).

    python benchmarks/repro/migrate_jsonl.py [--jsonl docs/results/runs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repro.common import Context, trusted

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jsonl", type=Path, default=REPO / "docs" / "results" / "runs.jsonl")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    p.add_argument("--tracking-uri", default=None, help="the MLflow store (default: OUT/mlflow.db)")
    args = p.parse_args()
    ctx = Context(work=Path(), out=args.out, data_root=Path(), tracking_uri=args.tracking_uri)
    ctx.load()
    lines = args.jsonl.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    # the latest record of a key wins, as in the former store
    latest = {_key(r): r for r in records}
    imported, dropped, present = Counter(), Counter(), Counter()
    for record in latest.values():
        section = record["section"]
        if not trusted(record):
            dropped[section] += 1
        elif ctx.find({k: record[k] for k in _KEY}) is not None:
            present[section] += 1
        else:
            ctx.add(record | {"loop": "standalone"})
            imported[section] += 1
    print(f"{len(records)} records, {len(latest)} distinct keys in {args.jsonl}")
    print(f"{'section':<12} {'imported':>8} {'dropped':>8} {'present':>8}")
    for section in sorted(set(imported) | set(dropped) | set(present)):
        print(f"{section:<12} {imported[section]:>8} {dropped[section]:>8} {present[section]:>8}")
    print("dropped: no model_hash, or not the one the preset gives now (retrain them);")
    print("present: already in the store")
    ctx.save()
    print(f"store {ctx.runs.uri}; export {ctx.export}")


_KEY = ("section", "dataset", "variant", "seed", "preset", "overrides", "quick")


def _key(record: dict) -> str:
    return json.dumps([record.get(k) for k in _KEY], sort_keys=True)


if __name__ == "__main__":
    main()
