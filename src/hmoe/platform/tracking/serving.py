"""The ``python_function`` flavor of a logged hmoe model: raw feature values in, CTRs out.

Generic MLflow tools (``mlflow.pyfunc.load_model``, ``mlflow models serve``) score a pandas
DataFrame with one column per feature of the prepared dataset, named as the feature, holding
the value as the dataset's vocabulary stores it (``"u42"``; a list of values for a multi-valued
field; a number for a numeric one). Categorical values are encoded with the dataset's own
vocabularies, copied into the model (``vocab/``, as ``hmoe data prepare`` wrote them): an
unknown value gets the OOV index 1, a missing one the padding index 0. The other inputs a model
may read (behaviour sequences, similarity features) are taken from the frame when it has them,
already encoded, and are empty otherwise (a request without history). The prediction is a
DataFrame with one probability column per task.

``add_pyfunc_flavor`` writes ``hmoe_encoding.json`` beside the model and adds the flavor;
MLflow calls ``_load_pyfunc`` on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmoe.platform.core import storage

__all__ = ["ENCODING_FILE", "RawFeatureScorer", "add_pyfunc_flavor", "raw_example"]

ENCODING_FILE = "hmoe_encoding.json"
VOCAB_DIR = "vocab"  # the prepared dataset's folder of fitted values, and the model's copy
FIRST_INDEX = 2  # vocabulary indices 0 and 1 are padding and OOV (hmoe.platform.data.vocab)
PYFUNC_LOADER = "hmoe.platform.tracking.serving"


def encoding_spec(
    data_dir: str | Path, input_names: Sequence[str], arrays: Sequence[np.ndarray]
) -> dict[str, Any] | None:
    """What the flavor needs to encode raw values; ``None`` when the dataset's manifest has
    no vocabulary for some categorical feature (then the model gets no pyfunc flavor)."""
    from hmoe.platform.data.reader import feature_schema, load_manifest

    manifest = load_manifest(data_dir)
    schema = feature_schema(manifest)
    vocabularies = manifest.get("vocabularies", {})
    if any(c.name not in vocabularies for c in schema.categorical):
        return None
    inputs = [
        {"name": n, "dtype": str(a.dtype), "shape": list(a.shape[1:])}
        for n, a in zip(input_names, arrays, strict=True)
    ]
    categorical = [
        {"name": c.name, "multi_valued": c.multi_valued, "max_len": c.max_len}
        | {k: vocabularies[c.name][k] for k in ("mode", "hash_size", "max_id")}
        for c in schema.categorical
        if c.name in input_names
    ]
    numeric = [n.name for n in schema.numeric if n.name in input_names]
    return {
        "inputs": inputs,
        "tasks": list(schema.tasks),
        "categorical": categorical,
        "numeric": numeric,
        "dataset_hash": manifest.get("dataset_hash"),
    }


def add_pyfunc_flavor(
    mlflow_model: Any, model_dir: str | Path, data_dir: str | Path, spec: Mapping[str, Any]
) -> None:
    """Write the encoding and the vocabularies into ``model_dir`` and add the flavor (which
    replaces MLflow's own tensor-in pyfunc flavor of a pickled model)."""
    from mlflow import pyfunc

    folder = Path(model_dir)
    (folder / ENCODING_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True))
    for feature in spec["categorical"]:
        name = f"{feature['name']}.parquet"
        source = storage.join(data_dir, VOCAB_DIR, name)  # a folder or an s3:// prefix
        if storage.exists(source):
            (folder / VOCAB_DIR).mkdir(exist_ok=True)
            (folder / VOCAB_DIR / name).write_bytes(storage.read_bytes(source))
    pyfunc.add_to_model(mlflow_model, loader_module=PYFUNC_LOADER, data=ENCODING_FILE)


def _vocabulary(model_dir: Path, feature: Mapping[str, Any]) -> Any:
    import pyarrow.parquet as pq

    from hmoe.platform.data.vocab import Vocabulary

    path = model_dir / VOCAB_DIR / f"{feature['name']}.parquet"
    keys = (
        pq.read_table(path).column("value").to_numpy(zero_copy_only=False) if path.is_file() else []
    )
    return Vocabulary(
        mode=feature["mode"],
        keys=np.asarray(keys, dtype=str),
        hash_size=feature["hash_size"],
        max_id=feature["max_id"],
    )


def raw_example(
    model_dir: str | Path, spec: Mapping[str, Any], batch: Mapping[str, np.ndarray]
) -> Any:
    """Encoded example rows turned back into raw values (a DataFrame of the flavor's input)."""
    import pandas as pd

    columns: dict[str, Any] = {}
    for feature in spec["categorical"]:
        keys = _vocabulary(Path(model_dir), feature).keys
        columns[feature["name"]] = [
            _decoded(row, feature, keys) for row in np.asarray(batch[feature["name"]]).tolist()
        ]
    for name in spec["numeric"]:
        columns[name] = np.asarray(batch[name], dtype=np.float64).tolist()
    return pd.DataFrame(columns)


def _decoded(row: Any, feature: Mapping[str, Any], keys: np.ndarray) -> Any:
    def one(index: int) -> str | None:
        if index < FIRST_INDEX:
            return None
        if feature["mode"] == "identity":
            return str(index - FIRST_INDEX)
        return str(keys[index - FIRST_INDEX]) if index - FIRST_INDEX < len(keys) else None

    if feature["multi_valued"]:
        return [v for v in (one(i) for i in row) if v is not None]
    return one(int(row))


class RawFeatureScorer:
    """The loaded flavor: ``predict(frame)`` -> one probability column per task.

    Args:
        model_dir: the logged model's folder (MLmodel, the torch model, the encoding).
    """

    def __init__(self, model_dir: str | Path) -> None:
        import mlflow.pytorch

        folder = Path(model_dir)
        self.spec = json.loads((folder / ENCODING_FILE).read_text())
        self.vocabs = {f["name"]: _vocabulary(folder, f) for f in self.spec["categorical"]}
        self.model = mlflow.pytorch.load_model(str(folder))

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> Any:
        import pandas as pd
        import torch

        del params
        frame = pd.DataFrame(model_input)
        missing = [
            name
            for name in [f["name"] for f in self.spec["categorical"]] + self.spec["numeric"]
            if name not in frame.columns
        ]
        if missing:
            raise ValueError(f"the frame lacks the feature columns {missing}")
        tensors = [torch.from_numpy(self._column(frame, i)) for i in self.spec["inputs"]]
        with torch.no_grad():
            probabilities = torch.sigmoid(self.model(*tensors).float()).numpy()
        return pd.DataFrame(probabilities, columns=self.spec["tasks"], index=frame.index)

    def _column(self, frame: Any, item: Mapping[str, Any]) -> np.ndarray:
        import pyarrow as pa

        name, dtype, shape = item["name"], np.dtype(item["dtype"]), item["shape"]
        rows = len(frame)
        feature = next((f for f in self.spec["categorical"] if f["name"] == name), None)
        if feature is not None and feature["multi_valued"]:
            width = feature["max_len"]
            out = np.zeros((rows, width), dtype=dtype)  # padding
            for r, values in enumerate(frame[name]):
                kept = [str(v) for v in list(values)[:width]] if values is not None else []
                out[r, : len(kept)] = self.vocabs[name].encode(pa.array(kept, pa.string()))
            return out
        if feature is not None:
            values = [None if _missing(v) else str(v) for v in frame[name]]
            return self.vocabs[name].encode(pa.array(values, pa.string())).astype(dtype)
        if name in frame.columns:
            values = np.asarray(frame[name].tolist(), dtype=np.float64)
            return np.nan_to_num(values, nan=0.0).astype(dtype).reshape(rows, *shape)
        return np.zeros((rows, *shape), dtype=dtype)  # an empty sequence, no similarity


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _load_pyfunc(path: str) -> RawFeatureScorer:
    """MLflow's entry point: ``path`` is the flavor's ``data`` file inside the model folder."""
    return RawFeatureScorer(Path(path).parent)
