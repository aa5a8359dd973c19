"""DeepCTR-Torch DIN and DeepFM trained on protocol Q1b, on the rows of our own prepared split.

The split is the report's prepared ``ml-100k-q1b`` dataset (``repro.datasets``: the shipped
``ml-100k-returning`` spec, click label only), read split by split as the training loop reads
it, so the peers see exactly our train / valid / test rows, in the same order, with the same
encoded ids (0 padding, 1 out of vocabulary). Peer inputs are the Q1 features: the single-valued
categoricals (user_id, item_id, gender, occupation, zip1, genre1), age and release_year as dense
inputs standardised with the train split's mean and std (similarities, where a dataset has
them, as they are), and for DIN the history of item ids and
genre1 with its length. Settings are the Q1 peer settings of docs/benchmarks.md: embedding 16,
DNN (128, 64), Adam lr 1e-3, batch 256, up to 8 epochs, the library's defaults otherwise; the
epoch with the best validation AUC is scored on test (early stopping with patience 2, as the
report's own runs). Seeds 1, 2, 3 (the library's model seed and torch's).

deepctr-torch is installed only into this benchmark's own folder (``--peer-dir``), as
``bench_models.py`` does; it never enters the project's environment.

    python benchmarks/bench_peers.py --threads 1       # writes docs/results/q1b_peers.json

The file is rewritten after every run; a run stored there with the same settings on the same
prepared data is kept, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import (
    PEER_LENGTH,
    PEER_VERSION,
    install_peer,
    load_average,
    machine,
    peer_features,
)
from hmoe.schema import LABELS, OOV_INDEX, PAD_INDEX, FeatureSchema, seq_column

REPO = Path(__file__).resolve().parents[1]
DATASET = "ml-100k-q1b"
PEERS = ("DIN", "DeepFM")
EMBEDDING_DIM = 16
DNN_UNITS = (128, 64)
LEARNING_RATE = 1e-3
BATCH_SIZE = 256
EPOCHS = 8
EVAL_BATCH_SIZE = 4096  # scoring only: the size changes no number, fewer calls are faster
PATIENCE = 2  # epochs without a better validation AUC before stopping, as the report's runs
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # metric prefix -> split


def peer_schema(schema: FeatureSchema) -> FeatureSchema:
    """The Q1 peer features: multi-valued categoricals (ml-100k's ``genres``, whose first token is
    ``genre1``) are left out, as the peers' Q1 inputs have none."""
    return dataclasses.replace(
        schema, categorical=tuple(c for c in schema.categorical if not c.multi_valued)
    )


def export_split(data: Path, split: str, schema: FeatureSchema) -> dict[str, np.ndarray]:
    """One split of the prepared dataset as DeepCTR columns (name -> ``[N]`` or ``[N, L]``
    array), in the prepared rows' order, plus ``label``. Numerics are raw here; ``standardise``
    scales them with the train split's statistics."""
    from hmoe.platform.data.batches import read_split

    batch = read_split(data, split, schema=schema)
    columns = {c.name: batch[c.name].numpy() for c in peer_schema(schema).categorical}
    for n in schema.numeric:
        columns[n.name] = batch[n.name].numpy().astype(np.float32)
    for m in schema.similarity:  # cosines in [-1, 1]: dense inputs as they are
        columns[m.name] = batch[m.name].numpy().astype(np.float32)
    for q in schema.sequences:
        columns[f"hist_{q.item_field}"] = batch[seq_column(q.name, "item")].numpy()
        if q.category_field is not None:
            columns[f"hist_{q.category_field}"] = batch[seq_column(q.name, "category")].numpy()
        columns[PEER_LENGTH] = batch[seq_column(q.name, "length")].numpy()
    columns["label"] = batch[LABELS][:, 0].numpy().astype(np.float32)
    return columns


def export(data: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every split (``train``, ``val``, ``test``), numerics standardised on train."""
    from hmoe.platform.data.batches import load_schema

    schema = load_schema(data)
    splits = {name: export_split(data, name, schema) for name in SPLITS}
    for n in schema.numeric:
        mean = float(splits["train"][n.name].mean())
        std = float(splits["train"][n.name].std()) or 1.0
        for columns in splits.values():
            columns[n.name] = (columns[n.name] - mean) / std
    return splits


def peer_model(kind: str, schema: FeatureSchema, seed: int) -> Any:
    from deepctr_torch.models import DIN, DeepFM

    schema = peer_schema(schema)
    if kind == "DeepFM":  # the history is an input of DIN only (the Q1 peer inputs)
        features = peer_features(dataclasses.replace(schema, sequences=()), EMBEDDING_DIM)
        torch.manual_seed(seed)
        return DeepFM(features, features, dnn_hidden_units=DNN_UNITS, seed=seed, device="cpu")
    features = peer_features(schema, EMBEDDING_DIM)
    history = [
        field
        for q in schema.sequences
        for field in (q.item_field, q.category_field)
        if field is not None
    ]
    torch.manual_seed(seed)
    return DIN(features, history, dnn_hidden_units=DNN_UNITS, seed=seed, device="cpu")


def scores(columns: dict[str, np.ndarray], probs: np.ndarray, user_field: str) -> dict[str, float]:
    from hmoe.platform.core.metrics import auc, gauc, logloss

    labels = columns["label"]
    return {
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        # as our loop: padding and the shared out-of-vocabulary id name no single user
        "gauc": gauc(labels, probs, columns[user_field], (PAD_INDEX, OOV_INDEX)),
    }


def train_peer(
    kind: str, splits: dict[str, dict[str, np.ndarray]], schema: FeatureSchema, seed: int
) -> dict[str, Any]:
    """One seeded run: per epoch, validation and test scores; the best-validation epoch kept."""
    model = peer_model(kind, schema, seed)
    model.compile(torch.optim.Adam(model.parameters(), lr=LEARNING_RATE), "binary_crossentropy")
    inputs = {name: {k: v for k, v in c.items() if k != "label"} for name, c in splits.items()}
    assert schema.user_field is not None
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        model.fit(inputs["train"], splits["train"]["label"], batch_size=BATCH_SIZE, epochs=1,
                  verbose=0, shuffle=True)  # fmt: skip
        entry: dict[str, float] = {"epoch": epoch}
        for name in ("val", "test"):
            probs = model.predict(inputs[name], batch_size=EVAL_BATCH_SIZE).ravel()
            scored = scores(splits[name], probs, schema.user_field)
            entry |= {f"{name}_{k}": v for k, v in scored.items()}
        history.append(entry)
        best = max(history, key=lambda h: h["val_auc"])
        print(f"  {kind} seed {seed} epoch {epoch}: val_auc {entry['val_auc']:.4f} "
              f"test_auc {entry['test_auc']:.4f}", flush=True)  # fmt: skip
        if epoch - int(best["epoch"]) >= PATIENCE:
            break
    best = max(history, key=lambda h: h["val_auc"])
    return {
        "seed": seed,
        "best_epoch": int(best["epoch"]),
        "epochs_run": len(history),
        "metrics": {k: float(v) for k, v in best.items() if k != "epoch"},
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _prepared(work: Path, data_root: Path) -> Path:
    from repro.common import Context
    from repro.datasets import prepared

    os.environ["HMOE_DATA_ROOT"] = str(data_root.resolve())
    return prepared(Context(work=work, out=work, data_root=data_root), DATASET)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hmoe-repro")
    parser.add_argument("--data-root", type=Path, default=None, help="default $HMOE_DATA_ROOT")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "q1b_peers.json")
    parser.add_argument("--peer-dir", type=Path, default=Path("/tmp/hmoe-bench-peers"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    install_peer(args.peer_dir)
    data_root = args.data_root or Path(
        os.environ.get("HMOE_DATA_ROOT", REPO.parent / "shared" / "data")
    )
    data = _prepared(args.work, data_root)
    from hmoe.platform.data.batches import load_schema

    schema = load_schema(data)
    splits = export(data)
    settings = {
        "embedding_dim": EMBEDDING_DIM,
        "dnn_hidden_units": list(DNN_UNITS),
        "lr": LEARNING_RATE,
        "batch_size": BATCH_SIZE,
        "epochs": EPOCHS,
        "patience": PATIENCE,
    }
    dataset_hash = json.loads((data / "manifest.json").read_text())["dataset_hash"]
    # a run stored with these settings on this very data is kept: an interrupted run resumes
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    same = stored.get("settings") == settings and stored.get("dataset_hash") == dataset_hash
    runs: dict[str, list[dict[str, Any]]] = stored["peers"] if same else {}
    result = {
        "dataset": DATASET,
        "dataset_hash": dataset_hash,
        "rows": {name: len(c["label"]) for name, c in splits.items()},
        "library": f"deepctr-torch {PEER_VERSION}",
        "settings": settings,
        "machine": machine(args.threads),
        "peers": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seed by seed, so a run cut short has every peer's first seeds
        for kind in args.peers:
            if any(r["seed"] == seed for r in runs.get(kind, [])):
                continue
            load_start = load_average()
            run = train_peer(kind, splits, schema, seed)
            run |= {"load_average": [load_start, load_average()], "date": _now()}
            runs.setdefault(kind, []).append(run)
            args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    for kind, peer in runs.items():
        aucs = [r["metrics"]["test_auc"] for r in peer]
        spread = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        print(f"{kind}: test AUC {statistics.fmean(aucs):.4f} ± {spread:.4f} (seeds {args.seeds})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
