"""Object storage against a real S3-compatible server (moto): a prepared dataset uploaded to an
``s3://`` prefix reads as the local one, a prefix without its manifest is refused, and job specs
naming ``s3://`` data and storage are checked by reaching the bucket."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from hmoe.config import ConfigError
from hmoe.jobs.services.processes import free_port
from hmoe.jobs.spec import example_path, load_job, validate
from hmoe.platform.api import dataset_hash
from hmoe.platform.core import storage
from hmoe.platform.data import iter_batches, load_manifest, read_split_table, verify_shards
from hmoe.platform.data.batches import split_megabytes
from hmoe.schema import MANIFEST
from tests.platform.prepared import write_prepared

BATCH = 200


@pytest.fixture(scope="module")
def local_and_s3(s3_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    local = write_prepared(tmp_path_factory.mktemp("prepared") / "tiny")
    uri = f"{s3_server.bucket('hmoe-data')}/prepared/tiny-{uuid.uuid4().hex[:6]}"
    storage.upload_dir(local, uri, MANIFEST)
    return local, uri


def test_a_dataset_on_s3_reads_as_its_local_copy(local_and_s3, s3_server):
    local, uri = local_and_s3
    # every local file is an object under the prefix, byte for byte (sha256 of boto3's read)
    files = {p.relative_to(local).as_posix(): p for p in local.rglob("*") if p.is_file()}
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    keys = {k.removeprefix(f"{prefix}/") for k in s3_server.keys(bucket, prefix)}
    assert keys == set(files)
    for name, path in files.items():
        blob = storage.read_bytes(f"{uri}/{name}")
        assert hashlib.sha256(blob).digest() == hashlib.sha256(path.read_bytes()).digest()
    assert load_manifest(uri) == load_manifest(local)
    verify_shards(uri)
    assert dataset_hash(uri) == dataset_hash(local)
    assert split_megabytes(uri, "train") == split_megabytes(local, "train") > 0
    for split in ("train", "valid", "test"):
        assert read_split_table(uri, split).equals(read_split_table(local, split))
    remote = list(iter_batches(uri, "valid", BATCH))
    for got, want in zip(remote, iter_batches(local, "valid", BATCH), strict=True):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_prefix_without_its_manifest_is_refused(local_and_s3):
    local, _ = local_and_s3
    uri = f"s3://hmoe-data/prepared/partial-{uuid.uuid4().hex[:6]}"
    storage.upload_dir(local, uri, MANIFEST)
    fs, path = storage.filesystem(uri)
    fs.delete_file(f"{path}/{MANIFEST}")  # what a reader sees while prepare still uploads
    assert storage.exists(f"{uri}/train")
    with pytest.raises(FileNotFoundError, match=rf"^{uri} is not a prepared dataset \(no "):
        load_manifest(uri)
    # a new upload over an old dataset hides the old manifest before touching its shards
    storage.upload_dir(local, uri, MANIFEST)
    assert fs.get_file_info(f"{path}/{MANIFEST}").type == pafs.FileType.File


def test_prepare_refuses_a_non_empty_prefix_that_holds_no_dataset(s3_server):
    from hmoe.platform.data import prepare

    uri = f"{s3_server.bucket('hmoe-data')}/junk-{uuid.uuid4().hex[:6]}"
    storage.write_bytes(f"{uri}/notes.txt", b"not a dataset")
    spec = Path(__file__).parents[2] / "src/hmoe/platform/data/specs/ml-100k.yaml"
    with pytest.raises(ValueError, match=rf"^{uri} is not empty and not a prepared dataset"):
        prepare(spec, uri)
    assert storage.read_bytes(f"{uri}/notes.txt") == b"not a dataset"


def _spec(**overrides):
    return load_job(example_path("smoke"), overrides)


def test_job_specs_with_s3_data_and_storage_are_checked_by_reaching_the_bucket(
    local_and_s3, s3_server
):
    _, uri = local_and_s3
    runs = f"{s3_server.bucket('hmoe-runs')}/jobs"
    validate(_spec(**{"dataset": {"prepared": uri}, "storage": runs}))
    with pytest.raises(ConfigError) as missing:
        validate(_spec(**{"dataset": {"prepared": uri + "-gone"}, "storage": runs}))
    assert str(missing.value) == (
        f"JobSpec.dataset.prepared: {uri}-gone is not a prepared dataset (no manifest.json); "
        "prepare it first (hmoe data prepare) or give dataset.spec"
    )
    with pytest.raises(ConfigError) as no_bucket:
        validate(_spec(**{"dataset": {"prepared": uri}, "storage": "s3://no-such-bucket/r"}))
    assert str(no_bucket.value) == (
        "JobSpec.storage: cannot reach s3://no-such-bucket/r: bucket 'no-such-bucket' does not "
        "exist"
    )
    # the spec's own AWS variables win over the submitter's: here an endpoint nobody serves
    dead = f"http://127.0.0.1:{free_port()}"
    spec = _spec(**{"dataset": {"prepared": uri}, "runtime.env_vars": {"AWS_ENDPOINT_URL": dead}})
    with pytest.raises(ConfigError) as unreachable:
        validate(spec)
    message = str(unreachable.value)
    assert message.startswith(f"JobSpec.dataset.prepared: cannot reach {uri}: ")
    assert "Could not connect" in message and "\n" not in message
    assert storage.exists(f"{uri}/{MANIFEST}")  # the submitter's environment is back


def test_a_spec_in_s3_reads_its_raw_tables_from_its_prefix(s3_server, tmp_path: Path):
    import yaml

    from hmoe.platform.data.staging import load_remote_spec, stage
    from hmoe.platform.data.synth import SynthConfig, spec_dict

    raw = tmp_path / "raw"
    files = {"impressions/part-0.parquet": b"log", "users/u.parquet": b"users",
             "items.parquet": b"items"}  # fmt: skip
    for name, blob in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(blob)
    (raw / "spec.yaml").write_text(yaml.safe_dump(spec_dict(SynthConfig())))
    uri = f"{s3_server.bucket('hmoe-data')}/raw/synth-{uuid.uuid4().hex[:6]}"
    storage.upload_dir(raw, uri, "spec.yaml")
    spec = load_remote_spec(f"{uri}/spec.yaml")
    assert spec.log.paths == (f"{uri}/impressions",)
    assert [s.table.paths for s in spec.side_tables] == [
        (f"{uri}/users",),
        (f"{uri}/items.parquet",),
    ]
    staged = stage(spec, tmp_path / "staged")
    copies = [
        Path(p) for t in (staged.log, *(s.table for s in staged.side_tables)) for p in t.paths
    ]
    assert copies[0].is_dir() and (copies[0] / "part-0.parquet").read_bytes() == b"log"
    assert (copies[1] / "u.parquet").read_bytes() == b"users"
    assert copies[2].read_bytes() == b"items"
    wildcard = dataclasses.replace(spec, log=dataclasses.replace(spec.log, paths=(f"{uri}/i*",)))
    with pytest.raises(ValueError, match="wildcards are not expanded on object storage"):
        stage(wildcard, tmp_path / "other")
