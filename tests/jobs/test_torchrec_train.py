"""``hmoe train`` with the ``torchrec`` embedding backend through the real platform (Ray Train,
MLflow), and its logged model used where TorchRec cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hmoe.jobs.cli import main
from tests.platform.prepared import write_prepared

pytest.importorskip("torchrec", reason="TorchRec/FBGEMM not installed (make venv installs them)")

# a process without TorchRec: load the logged model, print its validation AUC
_PREDICT_WITHOUT_TORCHREC = """
import json, sys
sys.modules["torchrec"] = sys.modules["fbgemm_gpu"] = None  # imports of them now fail
from hmoe.platform.data.batches import load_schema, read_split
from hmoe.platform.core.metrics import auc
from hmoe.platform.tracking.registry import load_model
uri, model_uri, data = sys.argv[1:]
val = read_split(data, "val", load_schema(data))
logits = load_model(uri, model_uri)(val)
print(json.dumps(auc(val["labels"][:, 0].numpy(), logits[:, 0].numpy())))
"""


@pytest.mark.ray
@pytest.mark.slow
def test_train_with_torchrec_tables_logs_a_model_that_predicts_without_torchrec(
    ray_cluster, tmp_path, monkeypatch, capsys
):
    """One epoch of the debug preset; the logged model (tables gathered into the ``torch``
    backend) reproduces the validation AUC the TorchRec model reached, in a process where
    ``import torchrec`` fails."""
    from mlflow import MlflowClient

    from hmoe.platform.tracking.runs import CONFIG_ARTIFACT, TAG_MODEL_URI

    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    sets = {
        "model.embedding.backend": "torchrec",
        "model.embedding.table_lr": 0.05,
        "model.embedding.table_l2": 1e-4,
        "train.epochs": 1,
        "train.batch_size": 64,
        "tracking.model_format": "pickle",  # torch.export of the model is test_export's part
    }
    argv = ["train", "--preset", "debug", "--data", str(data), "--experiment", "torchrec"]
    assert main([*argv, *(x for k, v in sets.items() for x in ("--set", f"{k}={v}"))]) == 0
    run_id = capsys.readouterr().out.split("MLflow run id:")[1].split()[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    config_file = MlflowClient(uri).download_artifacts(run_id, CONFIG_ARTIFACT, str(tmp_path))
    config = json.loads(Path(config_file).read_text())
    assert config["model"]["embedding"]["backend"] == "torchrec"
    out = subprocess.run(
        [sys.executable, "-c", _PREDICT_WITHOUT_TORCHREC, uri, run.data.tags[TAG_MODEL_URI], data],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == pytest.approx(
        run.data.metrics["val_auc"],
        abs=1e-6,  # the headline val_auc: the best epoch's
    )
