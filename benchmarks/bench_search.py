"""The 16-trial ``full`` search of the ``hmoe`` preset on ml-100k Q1, and its summary.

Runs ``hmoe.tune`` (Ray Tune + Optuna TPE + ASHA, one TorchTrainer per trial, MLflow) on a
prepared Q1 dataset, then reads every trial's Tune folder (``params.json``, ``result.json``)
and prints a leaderboard: sampled params, best validation AUC, test AUC of the restored best
epoch, epochs reached (ASHA stops weak trials early), errors. The best trial by validation AUC
is written to ``--out`` (``docs/results/full_search.json``), where the reproduction report
(``benchmarks/reproduce.py``) picks it up and retrains it for 3 seeds beside the default preset.

    python benchmarks/bench_search.py --data /tmp/hmoe-repro/data/ml-100k-q1 --work /tmp/search
    python benchmarks/bench_search.py --summarise /tmp/search/hmoe_runs/<search folder>
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="prepared ml-100k Q1 dataset (click only)")
    p.add_argument("--work", type=Path, default=Path("/tmp/hmoe-search"))
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-concurrent", type=int, default=1)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--summarise", type=Path, help="only summarise this Tune search folder")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "full_search.json")
    return p.parse_args()


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(search_dir: Path) -> dict[str, Any]:
    """Every trial of ``search_dir`` (a Tune experiment folder) and the best by val AUC."""
    trials = []
    for trial_dir in sorted(search_dir.glob("trial_driver_*")):
        results = _results(trial_dir)
        scored = [r for r in results if "val_auc" in r]
        error = (trial_dir / "error.txt").exists()
        trials.append(
            {
                "trial": trial_dir.name.split("_")[2],
                "params": json.loads((trial_dir / "params.json").read_text()),
                "best_val_auc": max((r["val_auc"] for r in scored), default=None),
                "test_auc": next(
                    (r["test_auc"] for r in reversed(results) if "test_auc" in r), None
                ),
                "epochs": len(scored),
                "seconds": max((r.get("time_total_s", 0.0) for r in results), default=0.0),
                "error": error,
                "started": min((r["timestamp"] for r in results), default=None),
                "ended": max((r["timestamp"] for r in results), default=None),
            }
        )
    done = [t for t in trials if t["best_val_auc"] is not None and not t["error"]]
    best = max(done, key=lambda t: t["best_val_auc"]) if done else None
    stamps = [t[k] for t in trials for k in ("started", "ended") if t[k] is not None]
    return {
        "search_dir": str(search_dir),
        "num_trials": len(trials),
        "num_errors": sum(t["error"] for t in trials),
        "span_s": (max(stamps) - min(stamps)) if stamps else None,
        "best_trial": best["trial"] if best else None,
        "best_params": best["params"] if best else {},
        "best_val_auc": best["best_val_auc"] if best else None,
        "best_test_auc": best["test_auc"] if best else None,
        "trials": trials,
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "date": dt.date.today().isoformat(),
    }


def _print(summary: dict[str, Any]) -> None:
    print(f"{'trial':>9} {'val AUC':>8} {'test AUC':>8} {'epochs':>6} {'s':>6}  params")
    for t in sorted(summary["trials"], key=lambda t: -(t["best_val_auc"] or 0.0)):
        val = f"{t['best_val_auc']:.4f}" if t["best_val_auc"] is not None else "error"
        test = f"{t['test_auc']:.4f}" if t["test_auc"] is not None else "-"
        short = {k.rsplit(".", 1)[-1]: v for k, v in t["params"].items()}
        print(f"{t['trial']:>9} {val:>8} {test:>8} {t['epochs']:>6} {t['seconds']:6.0f}  {short}")
    print(
        f"trials {summary['num_trials']}, errors {summary['num_errors']}, "
        f"first result to last {summary['span_s']} s; best {summary['best_trial']}: "
        f"val {summary['best_val_auc']}, test {summary['best_test_auc']}"
    )


def main() -> None:
    args = _args()
    search_dir = args.summarise
    if search_dir is None:
        import hmoe

        if args.data is None:
            raise SystemExit("--data is required to run the search")
        args.work.mkdir(parents=True, exist_ok=True)
        os.chdir(args.work)  # the embedded MLflow store and the Tune folders go here
        started = time.perf_counter()
        result = hmoe.tune(
            "hmoe",
            "full",
            args.data,
            args.num_samples,
            {"train.epochs": args.epochs},
            max_concurrent=args.max_concurrent,
            experiment="full-search-q1",
            progress=print,
        )
        print(f"search wall time {time.perf_counter() - started:.0f} s")
        search_dir = Path(result.path)
    summary = summarise(search_dir)
    _print(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
