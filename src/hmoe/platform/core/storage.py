"""Where datasets and run storage live: a local path or an object-storage URI (``s3://b/key``).

One helper turns a location into a pyarrow filesystem and a path on it, so the readers, the
writers and Ray (``read_parquet(filesystem=...)``, ``RunConfig(storage_path=...)``) see the same
storage. The S3 endpoint and credentials come from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3``), which pyarrow's ``S3FileSystem``, Ray and MLflow's boto3 all read; a
Ray worker gets them from its node's environment or the job's ``runtime_env``.

Object storage has no rename, so a dataset is written shard by shard under its prefix with the
manifest last (``upload_dir``): a reader refuses a prefix without the manifest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "S3_SCHEME",
    "StorageError",
    "absolute",
    "check_reachable",
    "download",
    "environ",
    "exists",
    "filesystem",
    "is_dir",
    "is_remote",
    "join",
    "list_names",
    "read_bytes",
    "size_bytes",
    "upload_dir",
    "write_bytes",
]

S3_SCHEME = "s3"
SCHEME_MARK = "://"
SUPPORTED_SCHEMES = (S3_SCHEME,)


class StorageError(ValueError):
    """A location that cannot be used: an unsupported scheme, or storage that cannot be reached."""


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a local path."""
    return SCHEME_MARK in str(location)


def _scheme(location: str) -> str:
    scheme = location.split(SCHEME_MARK, 1)[0].lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"{location}: unsupported storage scheme {scheme!r} (a local path or "
            f"{', '.join(s + SCHEME_MARK for s in SUPPORTED_SCHEMES)})"
        )
    return scheme


def absolute(location: str | Path, base: Path | None = None) -> str:
    """A URI as given; a local path expanded (``~``) and made absolute against ``base``."""
    if is_remote(location):
        _scheme(str(location))
        return str(location).rstrip("/")
    path = Path(location).expanduser()
    return str((path if path.is_absolute() else (base or Path.cwd()) / path).resolve())


def filesystem(location: str | Path) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path on it)`` for a local path or a URI."""
    import pyarrow.fs as pafs

    if not is_remote(location):
        return pafs.LocalFileSystem(), absolute(location)
    _scheme(str(location))
    try:
        return pafs.FileSystem.from_uri(str(location).rstrip("/"))
    except (OSError, ValueError) as err:
        raise StorageError(f"{location}: {_one_line(err)}") from err


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...``; a URI keeps its ``scheme://`` (``Path`` would fold it)."""
    if is_remote(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location).joinpath(*parts))


def exists(location: str | Path) -> bool:
    """Whether a file or a directory (for S3: any object under the prefix) is at ``location``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_names(location: str | Path) -> list[str]:
    """The names directly under a directory or prefix (empty when there is none)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def size_bytes(location: str | Path) -> int:
    fs, path = filesystem(location)
    return int(fs.get_file_info(path).size or 0)


def read_bytes(location: str | Path) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str | Path, data: bytes) -> None:
    fs, path = filesystem(location)
    if not is_remote(location):
        fs.create_dir(str(Path(path).parent), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def download(location: str, folder: Path) -> Path:
    """Copy the object ``location`` into ``folder`` (returns the file), or every object under
    the prefix ``location`` (returns ``folder``); raises ``FileNotFoundError`` when neither."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise StorageError(f"cannot reach {location}: {_one_line(err)}") from err
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{location}: no such object or prefix")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / info.base_name if info.type == pafs.FileType.File else folder
    pafs.copy_files(
        path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return target


def upload_dir(local: Path, location: str, last: str) -> None:
    """Copy the files of ``local`` under the URI ``location``, the file named ``last`` after every
    other one: a reader that finds ``last`` finds the rest (there is no rename to publish it)."""
    import pyarrow.fs as pafs

    fs, prefix = filesystem(location)
    stale = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    final = fs.get_file_info(f"{prefix}/{last}")
    if final.type != pafs.FileType.NotFound:
        fs.delete_file(final.path)  # a replaced dataset stops being readable first
    for info in stale:
        if info.type == pafs.FileType.File:
            fs.delete_file(info.path)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.relative_to(local) == Path(last)):
        pafs.copy_files(
            str(path),
            f"{prefix}/{path.relative_to(local).as_posix()}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )


@contextlib.contextmanager
def environ(variables: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``variables`` over it, restored after (the AWS variables a job spec
    gives its processes, for the submitter's checks of its object storage)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_reachable(location: str) -> None:
    """Raise ``StorageError`` naming ``location`` and the failure when its bucket cannot be
    reached (no endpoint, bad credentials, no such bucket); local paths are not checked here."""
    import pyarrow.fs as pafs

    if not is_remote(location):
        return
    fs, path = filesystem(location)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
        # a listing proves that the credentials may read it (a HEAD alone can pass anonymously)
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as err:
        raise StorageError(f"cannot reach {location}: {_one_line(err)}") from err
    if info.type != pafs.FileType.Directory:
        raise StorageError(f"cannot reach {location}: bucket {bucket!r} does not exist")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
