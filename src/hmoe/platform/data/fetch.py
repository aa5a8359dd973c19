"""``fetch``: download a public dataset from its official archive and lay it out for its spec.

MovieLens-100k comes from GroupLens as ``ml-100k.zip`` (``u.data``, ``u.item``, ``u.user``) and
is converted to the RecBole atomic files that ``specs/ml-100k.yaml`` reads (``ml-100k.inter``,
``.item``, ``.user``: tab-separated, ``name:type`` headers, genres as space-separated names).
The data keeps the GroupLens terms (research use, no redistribution).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from hmoe.platform.data.spec import data_root

__all__ = ["DATASETS", "FetchError", "convert_ml100k", "fetch"]

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
DATASETS = {"ml-100k": ML100K_URL}
DOWNLOAD_TIMEOUT_S = 60.0
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ITEM_FIXED_FIELDS = 5  # id | title | release date | video release date | IMDb URL


class FetchError(RuntimeError):
    """The download failed (offline, blocked, bad archive); the message says what to do."""


def fetch(
    name: str,
    out: str | Path | None = None,
    *,
    archive: str | Path | None = None,
    url: str | None = None,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download ``name`` (or read a local ``archive``) into ``out/<name>``; return that folder.

    Args:
        name: a key of ``DATASETS`` (``ml-100k``).
        out: the data root (default ``$HMOE_DATA_ROOT`` or ``../shared/data``).
        archive: an already downloaded ``ml-100k.zip`` (no network needed).
        url: overrides the official address (mirrors, tests).
        timeout_s: network timeout.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; fetchable: {sorted(DATASETS)}")
    target = Path(out if out is not None else data_root()) / name
    if archive is not None:
        payload = Path(archive).read_bytes()
    else:
        payload = _download(url or DATASETS[name], timeout_s)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        convert_ml100k(payload, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise FetchError(
            f"could not download {url} ({err}); this machine may be offline. Download the "
            "archive elsewhere and run `hmoe data fetch ml-100k --archive ml-100k.zip`"
        ) from err


def _member(archive: zipfile.ZipFile, name: str) -> str:
    matches = [m for m in archive.namelist() if m.endswith(f"/{name}") or m == name]
    if not matches:
        raise FetchError(f"the archive has no {name} (is it the MovieLens-100k zip?)")
    return archive.read(matches[0]).decode("latin-1")


def convert_ml100k(payload: bytes, out_dir: Path) -> None:
    """Write ``ml-100k.inter/.item/.user`` (RecBole layout) from the GroupLens zip bytes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile as err:
        raise FetchError(f"not a zip archive ({err})") from err
    with archive:
        ratings = _member(archive, "u.data")
        items = _member(archive, "u.item")
        users = _member(archive, "u.user")
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += ["\t".join(line.split("\t")[:4]) for line in ratings.splitlines() if line.strip()]
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for line in items.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        flags = fields[_ITEM_FIXED_FIELDS : _ITEM_FIXED_FIELDS + len(ML100K_GENRES)]
        genres = " ".join(g for g, flag in zip(ML100K_GENRES, flags, strict=True) if flag == "1")
        year = fields[2][-4:] if fields[2][-4:].isdigit() else ""
        item.append("\t".join([fields[0], _title(fields[1]), year, genres]))
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user += ["\t".join(line.split("|")) for line in users.splitlines() if line.strip()]
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, lines in (("inter", inter), ("item", item), ("user", user)):
        (out_dir / f"ml-100k.{suffix}").write_text("\n".join(lines) + "\n")
    (out_dir / "SOURCE.md").write_text(
        f"# MovieLens-100k\n\nDownloaded from {ML100K_URL} by `hmoe data fetch ml-100k` and "
        "converted to RecBole atomic files. GroupLens terms: research use, cite Harper & "
        "Konstan 2015, do not redistribute.\n"
    )


def _title(text: str) -> str:
    """Titles without the trailing "(year)" and without tabs."""
    text = text.replace("\t", " ").strip()
    if text.endswith(")") and text[-6:-5] == "(" and text[-5:-1].isdigit():
        text = text[:-6].strip()
    return text
