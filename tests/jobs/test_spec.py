"""Job specs: shipped examples validate; malformed specs are refused, naming the key path,
before any cluster is contacted; the job's runtime_env never ships the repository root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hmoe.config import ConfigError
from hmoe.jobs.api import JobClient, runtime_env, submit
from hmoe.jobs.entry import RESULT_MARKER, decode_spec, encode_spec, parse_result
from hmoe.jobs.services.processes import free_port
from hmoe.jobs.spec import (
    EXAMPLES,
    JobSpec,
    example_path,
    load_job,
    shipped_dataset_spec,
    validate,
)
from tests.conftest import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "src" / "hmoe" / "jobs" / "examples"


def _smoke(tmp_path: Path, **changes: object) -> dict:
    data = yaml.safe_load(example_path("smoke").read_text())
    data["dataset"] = {"prepared": str(_prepared(tmp_path))}
    data.update(changes)
    return data


def _prepared(tmp_path: Path) -> Path:
    folder = tmp_path / "prepared"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text("{}")
    return folder


def test_every_shipped_example_is_registered_and_validates():
    shipped = sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))
    assert shipped == sorted(EXAMPLES)
    for name in EXAMPLES:
        spec = load_job(example_path(name))
        validate(spec, check_paths=False)
        assert JobSpec.from_dict(spec.to_dict()) == spec, name


def test_the_examples_show_both_job_kinds_and_both_dataset_sources():
    """A user copies an example to start: there is one of each kind of job, one that prepares a
    shipped real dataset and one that generates synthetic logs."""
    specs = [load_job(example_path(name)) for name in EXAMPLES]
    assert {spec.kind for spec in specs} == {"train", "tune"}
    real = [s.dataset.spec for s in specs if s.dataset.spec is not None]
    assert real and all(shipped_dataset_spec(name) is not None for name in real)
    assert any(spec.dataset.synthetic is not None for spec in specs)


MALFORMED = {
    "unknown top-level key": ({"resource": {}}, r"JobSpec: unknown key\(s\) \['resource'\]"),
    "unknown nested key": (
        {"resources": {"workers": 1, "wrkers": 2}},
        r"JobSpec\.resources: unknown key\(s\) \['wrkers'\]",
    ),
    "wrong type": ({"resources": {"workers": "two"}}, r"JobSpec\.resources\.workers: expected"),
    "wrong type in search": ({"search": {"space": "smoke", "num_samples": 1.5}}, "num_samples"),
    "negative workers": ({"resources": {"workers": -2}}, r"resources\.workers must be in 1"),
    "zero cpus": ({"resources": {"cpus_per_worker": 0}}, r"cpus_per_worker must be > 0"),
    "too many gpus": ({"resources": {"gpus_per_worker": 16}}, r"gpus_per_worker must be in 0\.\.8"),
    "1.5 gpus": ({"resources": {"gpus_per_worker": 1.5}}, r"Ray shares a GPU only below 1"),
    "no concurrency": ({"resources": {"concurrent_trials": 0}}, "concurrent_trials must be >= 1"),
    "no samples": ({"search": {"space": "smoke", "num_samples": 0}}, "num_samples must be >= 1"),
    "two datasets": (
        {"dataset": {"prepared": "/p", "spec": "ml-100k", "out": "/o"}},
        "exactly one of prepared, spec or synthetic",
    ),
    "no dataset given": ({"dataset": {}}, r"exactly one of .* \(got none\)"),
    "spec without out": ({"dataset": {"spec": "ml-100k"}}, r"dataset\.out: where to prepare"),
    "relative path": ({"dataset": {"prepared": "data/x"}}, r"dataset\.prepared: 'data/x' is rel"),
    "scheduler": ({"search": {"space": "s", "num_samples": 1, "scheduler": "hb"}}, "scheduler"),
    "workers as override": ({"overrides": {"train.num_workers": 2}}, "under resources"),
    "bad name": ({"name": "my job!"}, r"name: 'my job!' must be"),
    "no tracking uri": ({"tracking": {"experiment": "x"}}, r"missing required key 'uri'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_spec_is_refused_with_the_key_path(tmp_path: Path, case: str):
    changes, message = MALFORMED[case]
    with pytest.raises(ConfigError, match=message):
        load_job(_smoke(tmp_path, **changes))


def test_missing_dataset_key_is_refused(tmp_path: Path):
    data = _smoke(tmp_path)
    del data["dataset"]
    with pytest.raises(ConfigError, match="JobSpec: missing required key 'dataset'"):
        load_job(data)


LR = {"type": "loguniform", "low": 1e-4, "high": 1e-2}
REGISTRY_ERRORS = {
    "unknown preset": ({"preset": "hmoee"}, r"JobSpec\.preset: unknown preset 'hmoee'"),
    "unknown space": (
        {"search": {"space": "ful", "num_samples": 2}},
        r"JobSpec\.search\.space: unknown space 'ful'",
    ),
    "unknown override path": ({"overrides": {"train.lrr": 0.1}}, r"JobSpec\.overrides: .*'lrr'"),
    "unknown path in an own space": (
        {"search": {"space": {"train.lrr": LR}, "num_samples": 2}},
        r"JobSpec\.search\.space: .*unknown override path 'train\.lrr'",
    ),
    "own space of a wrong type": (
        {"search": {"space": {"train.epochs": LR}, "num_samples": 2}},
        r"JobSpec\.search\.space: .*ExperimentConfig\.train\.epochs: expected an int",
    ),
    "override of a wrong type": ({"overrides": {"train.epochs": "x"}}, r"train\.epochs"),
    "missing prepared dir": (
        {"dataset": {"prepared": "/nonexistent/hmoe/prepared"}},
        r"JobSpec\.dataset\.prepared: .*\(no manifest\.json\)",
    ),
    "unknown dataset spec": ({"dataset": {"spec": "ml-1m", "out": "/o"}}, "no shipped dataset"),
    "missing raw root": (
        {"dataset": {"spec": "ml-100k", "raw_root": "/nonexistent/raw", "out": "/o"}},
        r"raw_root: raw data folder /nonexistent/raw does not exist",
    ),
}


@pytest.mark.parametrize("case", list(REGISTRY_ERRORS))
def test_validate_refuses_what_the_schema_cannot_see(tmp_path: Path, case: str):
    changes, message = REGISTRY_ERRORS[case]
    spec = load_job(_smoke(tmp_path, **changes))
    with pytest.raises(ConfigError, match=message):
        validate(spec)


def test_an_own_space_in_yaml_loads_validates_and_travels_to_the_cluster(tmp_path: Path):
    space = {"train.lr": LR, "model.combine.method": {"type": "categorical", "choices": ["mean"]}}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(_smoke(tmp_path, search={"space": space, "num_samples": 2})))
    spec = load_job(path)
    validate(spec)
    assert spec.search.space["train.lr"].type == "loguniform"
    assert decode_spec(encode_spec(spec)) == spec
    bad = {"space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}, "num_samples": 2}
    with pytest.raises(ConfigError, match=r"JobSpec\.search\.space.*train\.lr.*needs low > 0"):
        load_job(_smoke(tmp_path, search=bad))


def test_remote_paths_are_not_checked_locally_when_told(tmp_path: Path):
    spec = load_job(_smoke(tmp_path, dataset={"prepared": "/only/on/the/cluster"}))
    validate(spec, check_paths=False)
    with pytest.raises(ConfigError, match="no manifest"):
        validate(spec)


def test_submit_refuses_before_contacting_any_cluster(tmp_path: Path):
    # nothing listens on the port: reaching the network would raise ConnectionError instead
    address = f"http://127.0.0.1:{free_port()}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_smoke(tmp_path, resources={"workers": -1})))
    with pytest.raises(ConfigError, match=r"resources\.workers"):
        submit(bad, address, token_file=None, state_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"JobSpec\.preset"):
        submit(_smoke(tmp_path, preset="nope"), address, state_dir=tmp_path)


class _RecordingSdk:
    """Records submissions; reports each as Ray's ``JobDetails`` with the status it is given."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []
        self.status: dict[str, str] = {}

    def submit_job(self, **request: object) -> str:
        self.submitted.append(request)
        self.status[str(request["submission_id"])] = "RUNNING"
        return str(request["submission_id"])

    def get_job_info(self, job_id: str):
        from ray.job_submission import JobDetails, JobType

        request = next(r for r in self.submitted if r["submission_id"] == job_id)
        return JobDetails(
            type=JobType.SUBMISSION, submission_id=job_id, entrypoint=request["entrypoint"],
            status=self.status[job_id], metadata=request["metadata"],
        )  # fmt: skip


def _offline_client(resources: dict[str, float]) -> tuple[JobClient, _RecordingSdk]:
    client = object.__new__(JobClient)
    client.address, client._headers, client.sdk = "http://cluster:8265", {}, _RecordingSdk()
    client.resources = lambda: resources  # type: ignore[method-assign]
    return client, client.sdk


def test_capacity_check_refuses_before_submitting(tmp_path: Path):
    spec = load_job(_smoke(tmp_path, resources={"workers": 2, "concurrent_trials": 2}))
    client, sdk = _offline_client({"CPU": 4.0})
    with pytest.raises(ConfigError, match=r"needs 5\.02 CPUs .* has 4"):
        client.submit(spec)
    gpu = load_job(_smoke(tmp_path, resources={"gpus_per_worker": 0.5}))
    with pytest.raises(ConfigError, match=r"needs 0\.5 GPUs .* has 0"):
        client.submit(gpu)
    assert sdk.submitted == []
    job = client.submit(load_job(_smoke(tmp_path)))
    assert [r["submission_id"] for r in sdk.submitted] == [job.submission_id]
    assert job.submission_id.startswith("smoke-")


def test_submitted_entrypoint_carries_the_spec_and_never_the_repo_root(tmp_path: Path):
    spec = load_job(_smoke(tmp_path), {"runtime.ship_package": True, "runtime.pip": ["tqdm"]})
    client, sdk = _offline_client({"CPU": 8.0})
    client.submit(spec)
    request = sdk.submitted[0]
    words = request["entrypoint"].split()
    assert words[:3] == ["python", "-m", "hmoe.jobs.entry"]
    assert decode_spec(words[words.index("--spec") + 1]) == spec
    env = request["runtime_env"]
    assert "working_dir" not in env
    [module] = env["py_modules"]
    assert Path(module).name == "hmoe" and (Path(module) / "jobs" / "entry.py").is_file()
    assert env["pip"] == ["tqdm"]
    assert env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == str(spec.runtime.stop_grace_s)
    assert request["metadata"]["hmoe.kind"] == "tune"


def test_runtime_env_relies_on_the_installed_package_by_default(tmp_path: Path):
    dataset = {"spec": "ml-100k", "raw_root": "/d", "out": "/o"}
    spec = load_job(_smoke(tmp_path, dataset=dataset, runtime={}))
    env = runtime_env(spec)
    assert set(env) == {"env_vars"}
    assert env["env_vars"]["HMOE_DATA_ROOT"] == "/d"


def test_spec_round_trips_through_the_entrypoint_encoding(tmp_path: Path):
    spec = load_job(_smoke(tmp_path), {"overrides": {"train.epochs": 2, "train.lr": 0.01}})
    text = encode_spec(spec)
    assert text.replace("-", "").replace("_", "").replace("=", "").isalnum()  # shell-safe
    assert decode_spec(text) == spec
    assert isinstance(decode_spec(text), JobSpec)


def test_result_line_is_found_in_the_log():
    first, last = {"parent_run_id": "a"}, {"parent_run_id": "b"}
    logs = "\n".join(
        ["noise", RESULT_MARKER + json.dumps(first), "x", RESULT_MARKER + json.dumps(last)]
    )
    assert parse_result(logs) == last
    assert parse_result("no result here\n") is None


def test_overrides_on_load_are_strict(tmp_path: Path):
    spec = load_job(_smoke(tmp_path), {"resources.workers": 2, "search.num_samples": 5})
    assert (spec.resources.workers, spec.search.num_samples) == (2, 5)
    with pytest.raises(ConfigError, match="override"):
        load_job(_smoke(tmp_path), {"resources.wrkers": 2})
    with pytest.raises(FileNotFoundError, match="job spec not found"):
        load_job(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_job(tmp_path / "list.yaml")


def test_any_config_key_can_be_overridden_at_submission(tmp_path: Path):
    """``overrides.<config path>`` sets one key of the spec's overrides (whose keys are dotted),
    checked against the preset's ExperimentConfig by ``validate``."""
    sets = {"overrides.train.epochs": 3, "overrides.model.combine.method": "gate"}
    spec = load_job(_smoke(tmp_path), sets)
    assert dict(spec.overrides) == {
        "train.epochs": 3, "train.batch_size": 256, "model.combine.method": "gate",
    }  # fmt: skip
    validate(spec)
    with pytest.raises(ConfigError, match=r"JobSpec\.overrides: .*'lrr'"):
        validate(load_job(_smoke(tmp_path), {"overrides.train.lrr": 0.1}))
    with pytest.raises(ConfigError, match=r"JobSpec\.overrides: .*'gate2'"):
        validate(load_job(_smoke(tmp_path), {"overrides.model.combine.method": "gate2"}))
    with pytest.raises(ConfigError, match="under resources"):
        load_job(_smoke(tmp_path), {"overrides.train.num_workers": 2})


def test_resume_resubmits_the_same_spec_on_the_first_jobs_storage(tmp_path: Path):
    from hmoe.jobs.api import JobStateError

    spec = load_job(_smoke(tmp_path), {"storage": "/runs"})
    client, sdk = _offline_client({"CPU": 8.0})
    first = client.submit(spec)
    meta = sdk.submitted[0]["metadata"]
    assert (meta["hmoe.storage"], meta["hmoe.num_samples"]) == (f"/runs/{first.submission_id}", "2")
    with pytest.raises(JobStateError, match="is RUNNING: only a STOPPED or FAILED search"):
        first.resume()
    sdk.status[first.submission_id] = "STOPPED"
    second = first.resume()
    sdk.status[second.submission_id] = "FAILED"
    third = second.resume()
    for request in sdk.submitted[1:]:
        words = request["entrypoint"].split()
        assert decode_spec(words[words.index("--spec") + 1]) == spec
        assert words[words.index("--resume") + 1] == first.submission_id  # its Tune state
        assert request["metadata"]["hmoe.storage"] == f"/runs/{first.submission_id}"
    assert [r["metadata"].get("hmoe.resumes") for r in sdk.submitted] == [
        None, first.submission_id, first.submission_id,
    ]  # fmt: skip
    assert third.submission_id not in {first.submission_id, second.submission_id}
    train = client.submit(load_job(_smoke(tmp_path, search=None)))
    sdk.status[train.submission_id] = "FAILED"
    with pytest.raises(JobStateError, match="hmoe train --resume RUN_ID"):
        train.resume()
