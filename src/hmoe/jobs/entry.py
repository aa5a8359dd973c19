"""The driver of a submitted job: ``python -m hmoe.jobs.entry --job-id ID --spec B64``.

It runs on the cluster's head (Ray Jobs starts it with ``RAY_ADDRESS`` set), so ``ray.init()``
attaches to that cluster. It prepares the dataset when the spec asks for it, calls
``hmoe.tune`` (or ``hmoe.train``) and publishes the result twice: as one
``HMOE_JOB_RESULT {json}`` line in the job's log, which ``Job.result()`` reads through the Jobs
API alone, and as the ``hmoe_job_result.json`` artifact of the MLflow parent run. Every run of
the job carries its id (``hmoe.job_id``; a resumed job keeps the id of the job that started the
search and adds ``hmoe.resume_job_id``). ``hmoe jobs stop`` sends SIGTERM: the driver then marks
the parent run and every trial run still RUNNING as KILLED, with the reason, before it exits,
so MLflow never shows a stopped job as running. ``--resume ID`` restores the search that job
``ID`` stored under ``<storage>/ID`` (``hmoe jobs resume``).
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from hmoe.jobs.spec import (
    DatasetRef,
    JobSpec,
    expand,
    location,
    shipped_dataset_spec,
)
from hmoe.platform.core import storage
from hmoe.schema import MANIFEST

__all__ = [
    "RESULT_ARTIFACT",
    "RESULT_MARKER",
    "TAG_JOB_ID",
    "JobStopped",
    "decode_spec",
    "encode_spec",
    "main",
    "parse_result",
]

RESULT_MARKER = "HMOE_JOB_RESULT "
RESULT_ARTIFACT = "hmoe_job_result.json"
TAG_JOB_ID = "hmoe.job_id"
TAG_RESUME_JOB_ID = "hmoe.resume_job_id"
STOP_REASON = "job {job_id} was stopped (hmoe jobs stop, SIGTERM)"
# ray.tune.tune's handler for SIGINT while a search runs (saves the state, ends the search)
TUNE_SIGINT_HANDLER = "signal_interrupt_tune_run"
SYNTH_RAW = "raw"
SYNTH_PREPARED = "prepared"
SYNTH_SPEC = "spec.yaml"
# the fields of a job's result that its run or search produced (``hmoe.tune``'s TuneResult
# carries them under these names)
RUN_FIELDS = (
    "parent_run_id", "best_run_id", "best_trial_id", "best_params", "best_metrics",
    "num_trials", "num_errors", "model_uri", "registered_model", "model_version",
)  # fmt: skip


class JobStopped(KeyboardInterrupt):
    """SIGTERM from ``Job.stop()``; a KeyboardInterrupt so that the search ends as KILLED."""


def encode_spec(spec: JobSpec) -> str:
    """The spec as one shell-safe argument (URL-safe base64 of its JSON)."""
    blob = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(blob.encode()).decode()


def decode_spec(text: str) -> JobSpec:
    return JobSpec.from_dict(json.loads(base64.urlsafe_b64decode(text.encode())))


def parse_result(logs: str) -> dict[str, Any] | None:
    """The last ``HMOE_JOB_RESULT`` of a job's log, or ``None``."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return None


def prepare_dataset(ref: DatasetRef, say: Callable[[str], None]) -> str:
    """The prepared directory (or ``s3://`` prefix) of ``ref``, preparing (and synthesising)
    it first if needed."""
    from hmoe.jobs.commands.data import prepare_summary
    from hmoe.platform.data import prepare

    if ref.prepared is not None:
        path = location(ref.prepared)
        if not storage.exists(storage.join(path, MANIFEST)):
            raise FileNotFoundError(f"dataset.prepared: no {MANIFEST} in {path}")
        return path
    out = location(ref.out or "")
    if ref.synthetic is not None:
        from hmoe.platform.data.synth import synthesize

        if storage.is_remote(out):
            raise ValueError(f"dataset.out: synthetic data is written to a local folder, not {out}")
        raw, out = expand(out) / SYNTH_RAW, str(expand(out) / SYNTH_PREPARED)
        spec_path = raw / SYNTH_SPEC
        if not spec_path.is_file():
            say(f"synthesising {ref.synthetic.rows:,} impressions -> {raw}")
            synthesize(raw, ref.synthetic.rows, ref.synthetic.seed, overwrite=True)
    else:
        spec_path = shipped_dataset_spec(ref.spec or "") or expand(ref.spec or "")
    if storage.exists(storage.join(out, MANIFEST)):
        say(f"reusing the prepared dataset {out}")
        return out
    say(f"preparing {spec_path} -> {out}")
    manifest = prepare(spec_path, out)
    for line in prepare_summary(manifest, out):
        say(line)
    return out


def _run(
    spec: JobSpec,
    job_id: str,
    resumes: str | None,
    data: str,
    say: Callable[[str], None],
    run_started: Callable[[str], None],
) -> dict[str, Any]:
    import hmoe

    res, track = spec.resources, spec.tracking
    search_job = resumes or job_id
    overrides = dict(spec.overrides) | {
        "train.cpus_per_worker": res.cpus_per_worker,
        # one folder per job: searches are named by their config, so a rerun would collide
        "train.storage_path": storage.join(location(spec.storage), search_job),
    }
    tags = {TAG_JOB_ID: search_job} | ({TAG_RESUME_JOB_ID: job_id} if resumes else {})
    common: dict[str, Any] = {
        "workers": res.workers,
        "gpus_per_worker": res.gpus_per_worker,
        "tracking_uri": track.uri,
        "experiment": track.experiment,
        "registered_model": track.registered_model,
        "tags": tags,
        "progress": say,
        "run_started": run_started,
    }
    if spec.search is None:
        return _run_fields(hmoe.train(spec.preset, data, overrides, **common))
    search = spec.search
    found = hmoe.tune(
        spec.preset,
        search.space,
        data,
        search.num_samples,
        overrides,
        max_concurrent=res.concurrent_trials,
        scheduler=search.scheduler,
        resume=resumes is not None,
        **common,
    )
    return _run_fields(found)


def _run_fields(found: Any) -> dict[str, Any]:
    """The part of a job's result (``JobResult``) that ``hmoe.tune``'s TuneResult or
    ``hmoe.train``'s TrainResult holds; a single run is a search of one trial, its own best."""
    from hmoe.platform.api import TrainResult

    if not isinstance(found, TrainResult):
        return {name: getattr(found, name) for name in RUN_FIELDS}
    single = {"best_trial_id": None, "best_params": {}, "num_trials": 1, "num_errors": 0}
    return single | {
        "parent_run_id": found.run_id,
        "best_run_id": found.run_id,
        "best_metrics": found.metrics,
        "model_uri": found.model_uri,
        "registered_model": found.registered_model,
        "model_version": found.model_version,
    }


def _publish(spec: JobSpec, result: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(spec.tracking.uri)
    if result.get("model_version") is not None:  # the registered version names its job too
        name, version = result["registered_model"], str(result["model_version"])
        client.set_model_version_tag(name, version, TAG_JOB_ID, str(result["job_id"]))
    client.log_dict(result["parent_run_id"], result, RESULT_ARTIFACT)
    print(RESULT_MARKER + json.dumps(result, sort_keys=True, default=str), flush=True)


def _stopper(job_id: str, stops: list[str]) -> Callable[[int, Any], None]:
    """The SIGTERM handler; it appends the stop's reason (naming the job) to ``stops``.

    While Ray Tune runs a search, the stop goes to Tune's own SIGINT handler: Tune then saves
    its state one last time and stops its trials, so a resume reruns only the trials that had
    not ended (an exception instead would leave the state of up to 10 s before). Elsewhere, and
    on a second stop, it raises ``JobStopped``.
    """

    def on_sigterm(signum: int, frame: Any) -> None:
        stops.append(STOP_REASON.format(job_id=job_id))
        tune_handler = signal.getsignal(signal.SIGINT)
        if len(stops) == 1 and getattr(tune_handler, "__name__", "") == TUNE_SIGINT_HANDLER:
            tune_handler(signum, frame)  # type: ignore[operator]
            return
        raise JobStopped(stops[0])

    return on_sigterm


def run_job(spec: JobSpec, job_id: str, resumes: str | None = None) -> int:
    """Run ``spec`` (``resumes``: restore the search job ``resumes`` stored); 0 on success,
    1 on failure, 130 when stopped."""
    parents: list[str] = []
    stops: list[str] = []

    def say(line: str) -> None:
        print(f"[hmoe] {line}", flush=True)

    try:
        import ray

        ray.init()  # attaches to the job's cluster (RAY_ADDRESS) before hmoe would start one
        # after ray.init, which installs its own SIGTERM handler (SystemExit, i.e. FAILED runs)
        signal.signal(signal.SIGTERM, _stopper(job_id, stops))
        data = prepare_dataset(spec.dataset, say)
        # the run that parents the others, to end it and its trials if the call fails
        result = _run(spec, job_id, resumes, data, say, parents.append)
        result |= {
            "job_id": job_id,
            "name": spec.name,
            "kind": spec.kind,
            "status": "SUCCEEDED",
            "tracking_uri": spec.tracking.uri,
            "experiment": spec.tracking.experiment,
            "dataset": str(data),
        }
        _publish(spec, result)
        return 0
    except BaseException as err:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second stop must not cut the clean-up
        from hmoe.platform.core.failures import failure_reason
        from hmoe.platform.search.tune import end_search_runs

        # a search Tune ended gracefully raises SearchInterrupted; Ray may turn JobStopped into
        # a bare KeyboardInterrupt: either way the reason is the stop itself
        stopped = bool(stops) or isinstance(err, KeyboardInterrupt)
        traceback.print_exc()
        reason = STOP_REASON.format(job_id=job_id) if stopped else failure_reason(err)
        status = "KILLED" if stopped else "FAILED"
        if parents:
            ended = end_search_runs(spec.tracking.uri, parents[0], status, reason)
            say(f"marked {len(ended)} MLflow run(s) {status}: {reason}")
        return 130 if stopped else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmoe.jobs.entry")
    parser.add_argument("--job-id", required=True, help="the Ray submission id")
    parser.add_argument("--spec", required=True, help="the job spec (hmoe.jobs.entry.encode_spec)")
    parser.add_argument("--resume", default=None, help="restore the search this job id stored")
    args = parser.parse_args(argv)
    # a stop before ray.init raises JobStopped; run_job installs its own handler after ray.init
    signal.signal(signal.SIGTERM, _stopper(args.job_id, []))
    return run_job(decode_spec(args.spec), args.job_id, args.resume)


if __name__ == "__main__":
    sys.exit(main())
