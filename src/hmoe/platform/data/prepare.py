"""``prepare(spec, out_dir)``: raw logs to a prepared dataset directory, on Ray Data.

The stages, and which of them stream:

0. before any Ray work: the spec against the data (``columns``: every column it names in each
   file's schema or header, 0/1 labels in the first rows), each a one-line ``ValueError``;
1. read + join side tables + validate (one task per group of file fragments, see
   ``read_tasks``), each task writing its parsed rows to one Arrow IPC file in the temporary
   output (so memory does not grow with the data: no parsed row sits in the object store or
   is spilled by it) and returning the block's totals (rows, counts per quarantine reason,
   key range); more than ``validate.max_quarantine_fraction`` of the rows quarantined fails
   the run here (one line: the share, the top reasons with their fields). Side tables are
   read and indexed once in the driver and passed by reference; their embeddings are parsed
   once and rows carry only the key's position. An error raised in a task reaches the caller
   as itself, out of Ray's wrappers;
2. statistics passes over the parsed files (streaming maps returning small partial results
   merged in the driver): split boundaries (histogram narrowing), train vocabularies and
   numeric statistics;
3. quarantine rows written (streaming; with the failing spec entry and the source file);
4. encoding (streaming map) that scatters each block's rows into per-shard pieces on disk
   (``pieces``; rows go to their user's shard when sequences or exposure counts need each
   user's rows together, and events of separate behaviour logs to their user's shard); the
   parsed blocks are then released;
5. one task per shard gathers its pieces, sorts them by row id, adds sequences / exposure
   counts and writes one file per split (``part-<shard>.parquet``, zstd, fixed row groups:
   the same input gives byte-identical shards).

A shard holds ``output.rows_per_shard`` rows on average, which bounds a finishing task's
memory; no stage moves parsed or encoded rows through the object store. The scratch files
(``.parsed/``, then ``.pieces/``: about 125 bytes per row each for the synth log) live in the
temporary output directory, which every worker must see (as for the shards themselves), and
are deleted before the rename.

Output, written into a temporary directory beside ``out_dir`` and renamed at the end (what a
killed run leaves beside ``out_dir`` is cleaned up by the next run, see ``output``)::

    out_dir/manifest.json  train/part-*.parquet  valid/...  test/...  quarantine/  vocab/
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.core import storage
from hmoe.platform.core.failures import is_user_error, root_cause
from hmoe.platform.data import stats as pstats
from hmoe.platform.data.behaviour import parse_events
from hmoe.platform.data.columns import check_columns, check_labels
from hmoe.platform.data.encode import (
    RECORD_SCHEMA,
    SHARD_COLUMN,
    EncodePlan,
    encode_batch,
    encode_events,
    finish_shard,
)
from hmoe.platform.data.lookup import KeyIndex, SideTable
from hmoe.platform.data.output import (
    MANIFEST_VERSION,
    build_manifest,
    check_out,
    check_remote_out,
    clean_leftovers,
    commit,
    make_tmp,
    write_vocab_files,
)
from hmoe.platform.data.pieces import SUFFIX, gather, load, save, scatter
from hmoe.platform.data.sides import join_side_tables, side_embeddings
from hmoe.platform.data.spec import DatasetSpec, load_spec
from hmoe.platform.data.split import SplitAssigner, group_boundaries, locate_boundaries
from hmoe.platform.data.split import pinned_files as pinned_file_splits
from hmoe.platform.data.staging import has_remote_inputs, load_remote_spec, stage
from hmoe.platform.data.tables import (
    FILE_COLUMN,
    ROW_COLUMN,
    fragments,
    list_files,
    read_fragment,
    read_table,
)
from hmoe.platform.data.validate import FIELD_COLUMN, RAW_COLUMN, REASON_COLUMN, parse_batch
from hmoe.schema import MANIFEST

__all__ = ["MANIFEST_VERSION", "prepare"]

LOG = logging.getLogger(__name__)
PARSED = ".parsed"  # scratch folder of the parsed blocks inside the temporary output
PIECES = ".pieces"  # scratch folder of the encoded pieces inside the temporary output
READ_TASK_ROWS = 400_000  # rows per read task (block) at most; see read_tasks
MIN_READ_TASKS = 8  # read tasks at least, as long as there are enough fragments
TASKS_PER_CPU = 4  # Ray tasks per CPU in a pass at most; see _num_tasks
RAY_RETRY_NOTE = "Failed to "  # how Ray Data's note on a failed map task's retries begins
TOP_REASONS = 3  # (reason, field) pairs named when too many rows are quarantined


def prepare(
    spec: DatasetSpec | str | Path,
    out_dir: str | Path,
    *,
    base_dir: str | Path | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prepare a dataset; returns the manifest (also written to ``out_dir/manifest.json``).

    Empty splits and tasks with one class in a split are logged as warnings and listed in the
    manifest's ``warnings`` (counts per split and task in ``label_counts``).

    Args:
        spec: a ``DatasetSpec`` or the path of its YAML file.
        out_dir: the prepared directory, replaced as a whole: it must be absent, empty or a
            prepared dataset (any other directory only with ``overwrite``), and neither the
            current directory, one of its parents, nor a directory holding the spec or an input.
        base_dir: anchors the spec's relative paths (default: the spec file's directory, or the
            current directory for a spec object).
        progress: show Ray Data's progress bars and a rows-written bar.
        overwrite: replace a non-empty ``out_dir`` that holds no prepared dataset.

    Raises:
        ValueError: ``out_dir`` may not be replaced (before anything is read or written).
    """
    spec_path: str | None = None
    if not isinstance(spec, DatasetSpec) and storage.is_remote(spec):
        spec_path, spec = str(spec), load_remote_spec(str(spec))
    elif not isinstance(spec, DatasetSpec):
        spec_path = str(Path(spec).absolute())
        base_dir = base_dir if base_dir is not None else Path(spec).absolute().parent
        spec = load_spec(spec)
    base = Path(base_dir if base_dir is not None else Path.cwd()).absolute()
    if storage.is_remote(out_dir):
        return _prepare_remote(spec, spec_path, base, str(out_dir), progress, overwrite)
    # the real path: a symlinked out_dir is compared, and replaced, where it points
    out = Path(out_dir).resolve()
    if out.parent.is_dir():
        # first: an output a killed run moved aside is back in place before it is judged
        clean_leftovers(out)
    check_out(out, spec, base, Path(spec_path) if spec_path else None, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_tmp(out)
    try:
        with _data_context(progress):
            manifest = _run(spec, base, tmp, progress)
        manifest["spec_path"] = spec_path
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for warning in manifest["warnings"]:
        LOG.warning("prepare %s: %s", spec.name, warning)
    return manifest


def _prepare_remote(
    spec: DatasetSpec,
    spec_path: str | None,
    base: Path,
    out: str,
    progress: bool,
    overwrite: bool,
) -> dict[str, Any]:
    """``prepare`` into an ``s3://`` prefix: the dataset is built in a local temporary directory
    and uploaded shard by shard, the manifest last (object storage has no rename)."""
    check_remote_out(out, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix="hmoe-prepare-"))
    try:
        with _data_context(progress):
            manifest = _run(spec, base, tmp, progress)
        manifest["spec_path"] = spec_path
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        storage.upload_dir(tmp, out, MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for warning in manifest["warnings"]:
        LOG.warning("prepare %s: %s", spec.name, warning)
    return manifest


def _run(spec: DatasetSpec, base: Path, tmp: Path, progress: bool) -> dict[str, Any]:
    if not has_remote_inputs(spec):
        return _run_local(spec, base, tmp, progress)
    inputs = Path(tempfile.mkdtemp(prefix="hmoe-inputs-"))
    try:
        manifest = _run_local(stage(spec, inputs), base, tmp, progress)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)
    # the spec as written (its s3:// paths), not the staged copy's
    return manifest | {"spec": spec.to_dict(), "spec_hash": spec.config_hash()}


def _run_local(spec: DatasetSpec, base: Path, tmp: Path, progress: bool) -> dict[str, Any]:
    # the spec against the files before Ray starts: a wrong column fails in a second
    check_columns(spec, base)
    check_labels(spec, base)
    sides = _side_tables(spec, base)
    embeddings = side_embeddings(spec, sides)
    frags = fragments(spec.log, base)
    files = list_files(spec.log, base)
    from hmoe.platform.core.ray_start import start_ray

    # before Ray Data's own ray.init() could join a `ray start` cluster; a Ray started here is
    # shut down at the end, so that the next call of the process sizes its own
    started = start_ray()
    try:
        with _original_task_errors():
            return _run_on_ray(spec, base, tmp, progress, sides, embeddings, frags, files)
    except Exception as err:
        root = root_cause(err)
        if root is err or not is_user_error(root):
            raise
        raise _without_retry_note(root) from None  # a user's mistake found in a Ray task
    finally:
        if started:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def _original_task_errors() -> Iterator[None]:
    """Ray Data raises a map task's own exception (inside ``RayTaskError``) for this call,
    not its ``UserCodeException``, which reaches the driver without it (only as text)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = context.raise_original_map_exception
    context.raise_original_map_exception = True
    try:
        yield
    finally:
        context.raise_original_map_exception = saved


def _without_retry_note(err: BaseException) -> BaseException:
    """``err`` without the retry advice Ray Data appends to its message (``RAY_RETRY_NOTE``
    on a line of its own, or as an argument of its own): the user's message, one line."""
    args = [a for a in err.args if not (isinstance(a, str) and a.startswith(RAY_RETRY_NOTE))]
    if args and isinstance(args[0], str):
        args[0] = args[0].split(f"\n{RAY_RETRY_NOTE}", 1)[0]
    err.args = tuple(args)
    return err


def _run_on_ray(
    spec: DatasetSpec,
    base: Path,
    tmp: Path,
    progress: bool,
    sides: list[SideTable],
    embeddings: dict,
    frags: list[dict],
    files: list[tuple[str, Path]],
) -> dict[str, Any]:
    import ray

    written = [w for w, _ in files]
    stage = _Stages()
    pinned = pinned_file_splits(spec, written)
    parsed, totals, fields = _read(spec, frags, ray.put((sides, embeddings)), tmp / PARSED, pinned)
    stage("read + validate + totals")
    _check_quarantine(spec, totals, fields)
    splitter = _splitter(spec, parsed, pinned, totals)
    stage("split boundaries")
    train = pstats.collect(
        parsed,
        pstats.block_train_stats,
        spec=spec,
        splitter=splitter,
        sample_rate=_sample_rate(spec, totals),
    )
    if train["rows"] == 0:
        raise ValueError("the train split is empty; check the split spec")
    vocabs = pstats.vocabularies(spec, train, totals)
    write_vocab_files(tmp, vocabs)
    stage("train statistics + vocabularies")
    if totals["valid"] < totals["read"]:
        parsed.map_batches(
            _quarantine_rows,
            batch_format="pyarrow",
            fn_kwargs={"files": _file_names(files, base)},
        ).write_parquet(str(tmp / "quarantine"))
    events = _read_events(spec, base)
    num_shards = max(1, -(-totals["valid"] // spec.output.rows_per_shard))
    plan = EncodePlan(
        spec=spec,
        vocabs=vocabs,
        splitter=splitter,
        num_shards=num_shards,
        out_dir=str(tmp),
        embeddings=embeddings,
    )
    stage("quarantine + behaviour logs")
    behaviour = {
        spec.sequences[index].name: pstats.collect(ds, pstats.block_reasons)
        for index, ds in events.items()
    }
    plan_ref = ray.put(plan)  # once in the object store, not in every task's UDF
    pieces = tmp / PIECES
    _scatter(parsed, events, plan_ref, pieces)
    del parsed, events
    shutil.rmtree(tmp / PARSED, ignore_errors=True)
    stage("encode + scatter into pieces")
    records = _finish(plan_ref, num_shards, pieces, totals["valid"], progress)
    shutil.rmtree(pieces)
    stage("finish + write shards")
    manifest = build_manifest(spec, totals, train, vocabs, records)
    manifest["behaviour_logs"] = behaviour
    return manifest


class _Stages:
    """Logs the wall time of each stage (logger ``hmoe.platform.data.prepare``, INFO)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        LOG.info("prepare: %s took %.1f s", name, now - self.start)
        self.start = now


def _read_events(spec: DatasetSpec, base: Path) -> dict[int, Any]:
    """Parsed events of each behaviour-log sequence, by sequence index (materialised)."""
    import ray.data

    events = {}
    for index, q in enumerate(spec.sequences):
        if q.behaviour_log is None:
            continue
        frags = fragments(q.behaviour_log.table, base)
        tasks = read_tasks(frags, spec.output.read_batch_rows)
        events[index] = (
            ray.data.from_items(tasks, override_num_blocks=len(tasks))
            .map_batches(
                _read_and_parse_events,
                batch_size=1,
                batch_format="pyarrow",
                fn_kwargs={"spec": spec, "sequence": index},
            )
            .materialize()
        )
    return events


def _read_and_parse_events(items: pa.Table, spec: DatasetSpec, sequence: int) -> Iterator[pa.Table]:
    q = spec.sequences[sequence]
    assert q.behaviour_log is not None
    for fragment in _task_fragments(items):
        for raw in read_fragment(q.behaviour_log.table, fragment, spec.output.read_batch_rows):
            yield parse_events(raw, spec, q)


def _side_tables(spec: DatasetSpec, base: Path) -> list[SideTable]:
    """Read every side table in the driver and index its key (which must be unique)."""
    out = []
    for side_spec in spec.side_tables:
        table = read_table(side_spec.table, base, spec.output.read_batch_rows)
        if side_spec.key not in table.column_names:
            raise ValueError(f"side table {side_spec.table.paths}: no key column {side_spec.key!r}")
        index = KeyIndex.of(table.column(side_spec.key))
        repeated = index.duplicated()
        if repeated:
            raise ValueError(
                f"side table {side_spec.table.paths}: key {side_spec.key!r} repeats, e.g. "
                f"{repeated[:5]}"
            )
        out.append(SideTable(table=table, index=index))
    return out


def _check_quarantine(spec: DatasetSpec, totals: dict[str, Any], fields: Counter) -> None:
    """Fail (one line) when no row is valid or more than ``max_quarantine_fraction`` of the rows
    are quarantined, naming the top reasons with the spec entries that gave them."""
    read, bad = totals["read"], totals["read"] - totals["valid"]
    if not read:
        raise ValueError(f"no rows in {list(spec.log.paths)}: the files hold no data lines")
    limit = spec.validate.max_quarantine_fraction
    top = "; ".join(
        f"{reason}{f' in {field}' if field else ''}: {n}"
        for (reason, field), n in fields.most_common(TOP_REASONS)
    )
    if totals["valid"] and bad <= limit * read:
        if bad:
            LOG.warning("prepare: %d of %d rows quarantined (%s)", bad, read, top)
        return
    hint = ""
    if any(reason == "bad_label" for (reason, _), _ in fields.most_common(TOP_REASONS)):
        hint = " (a label column that is not 0/1 needs positive_if)"
    if not totals["valid"]:
        raise ValueError(f"no valid rows in {list(spec.log.paths)}: {top}{hint}")
    raise ValueError(
        f"{bad} of {read} rows quarantined ({bad / read:.1%}), more than "
        f"validate.max_quarantine_fraction = {limit:g}: {top}{hint}; fix the spec or the data, "
        "or raise validate.max_quarantine_fraction in the spec"
    )


def _file_names(files: list[tuple[str, Path]], base: Path) -> list[str]:
    """Each log file's name as the quarantine records it: relative to the spec's directory
    when inside it."""
    return [
        str(path.relative_to(base)) if path.is_relative_to(base) else str(path) for _, path in files
    ]


def _read(
    spec: DatasetSpec, frags: list[dict], sides: Any, folder: Path, pinned: dict[int, int]
) -> tuple[Any, dict[str, Any], Counter]:
    """Read + validate every read task into one Arrow IPC file of parsed rows under ``folder``
    (block totals computed on the way); return a Dataset that loads those files (each later
    pass maps them from the page cache: no parsed row sits in the object store or is spilled
    by it), the merged totals and the quarantined rows per (reason, field). ``sides`` is the
    ObjectRef of ``(side tables, embeddings)``.
    """
    import ray.data

    tasks = read_tasks(frags, spec.output.read_batch_rows)
    rows = (
        ray.data.from_items(tasks, override_num_blocks=_num_tasks(len(tasks)))
        .map_batches(
            _read_and_save,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"spec": spec, "sides": sides, "folder": str(folder), "pinned": pinned},
        )
        .take_all()
    )
    totals = pstats.merge(pstats.block_totals, [pickle.loads(r["totals"]) for r in rows])
    fields = sum((pickle.loads(r["fields"]) for r in rows), Counter())
    paths = sorted(r["path"] for r in rows)
    parsed = ray.data.from_items(
        [{"path": p} for p in paths], override_num_blocks=_num_tasks(len(paths))
    ).map_batches(_load_parsed, batch_size=None, batch_format="pyarrow")
    return parsed, totals, fields


def _read_and_save(
    items: pa.Table, spec: DatasetSpec, sides: Any, folder: str, pinned: dict[int, int]
) -> pa.Table:
    import ray

    tables, embeddings = ray.get(sides)
    paths, totals, fields = [], [], []
    for task in items.to_pylist():
        parts = [
            parse_batch(join_side_tables(raw, spec, tables, embeddings), spec, embeddings)
            for fragment in task["fragments"]
            for raw in read_fragment(spec.log, fragment, spec.output.read_batch_rows)
        ]
        parsed = pa.concat_tables(parts, promote_options="default") if parts else None
        if parsed is None or not parsed.num_rows:
            continue
        path = Path(folder) / _piece_name(parsed)
        save(parsed, path)
        paths.append(str(path))
        totals.append(pickle.dumps(pstats.block_totals(parsed, spec=spec, pinned=pinned)))
        fields.append(pickle.dumps(_reason_fields(parsed)))
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "totals": pa.array(totals, pa.binary()),
            "fields": pa.array(fields, pa.binary()),
        }
    )


def _reason_fields(parsed: pa.Table) -> Counter:
    """Quarantined rows per (reason, failing spec entry or None)."""
    bad = parsed.filter(pc.is_valid(parsed.column(REASON_COLUMN)))
    pairs = zip(
        bad.column(REASON_COLUMN).to_pylist(), bad.column(FIELD_COLUMN).to_pylist(), strict=True
    )
    return Counter(pairs)


def _load_parsed(items: pa.Table) -> Iterator[pa.Table]:
    for path in items.column("path").to_pylist():
        yield load(path)


def read_tasks(frags: list[dict[str, Any]], batch_rows: int) -> list[dict[str, Any]]:
    """Consecutive fragments grouped into read tasks of about ``READ_TASK_ROWS`` rows.

    Every task becomes a block that each later pass touches, and each block costs Ray a
    scheduling round trip, (de)serialisation and Python call overhead per pass: fewer, larger
    blocks cut the CPU time of the whole run (10M synth rows, 100k-row fragments: 124 CPU s
    with one fragment per task, 101 with four). ``MIN_READ_TASKS`` keeps small inputs spread
    over the workers; fragments of unknown size (text files) count as ``batch_rows`` rows.
    """
    sizes = [f["rows"] if f["rows"] >= 0 else batch_rows for f in frags]
    target = max(1, min(READ_TASK_ROWS, sum(sizes) // MIN_READ_TASKS))
    tasks: list[dict[str, Any]] = []
    rows = target
    for fragment, size in zip(frags, sizes, strict=True):
        if not tasks or rows + size > target:
            tasks.append({"fragments": []})
            rows = 0
        tasks[-1]["fragments"].append(fragment)
        rows += size
    return tasks


def _task_fragments(items: pa.Table) -> Iterator[dict[str, Any]]:
    for task in items.to_pylist():
        yield from task["fragments"]


def _quarantine_rows(parsed: pa.Table, files: list[str]) -> pa.Table:
    """The quarantined rows: id, reason, raw row (JSON), failing spec entry, source file."""
    bad = parsed.filter(pc.is_valid(parsed.column(REASON_COLUMN)))
    names = pa.array(files, pa.string()).take(bad.column(FILE_COLUMN).combine_chunks())
    return pa.table(
        {
            "row_id": bad.column(ROW_COLUMN),
            "reason": bad.column(REASON_COLUMN),
            "raw": bad.column(RAW_COLUMN),
            "field": bad.column(FIELD_COLUMN),
            "file": names,
        }
    )


def _sample_rate(spec: DatasetSpec, totals: dict[str, Any]) -> float:
    return min(1.0, spec.output.quantile_sample_rows / max(1, totals["valid"]))


def _splitter(
    spec: DatasetSpec, parsed: Any, pinned: dict[int, int], totals: dict[str, Any]
) -> SplitAssigner:
    s = spec.split
    if s.kind in ("random", "cutoff", "group"):
        return SplitAssigner(
            kind=s.kind,
            pinned=pinned,
            cutoffs=s.cutoffs,
            fractions=s.fractions,
            seed=s.seed,
            group_by=s.group_by,
        )
    if s.kind == "group_temporal":
        assert s.group_by is not None
        parts = pstats.collect_list(
            parsed,
            pstats.block_group_rows,
            group_by=s.group_by,
            pinned=pinned,
            tie_break=s.tie_break,
        )
        groups = group_boundaries(pa.concat_tables(parts), s.fractions, s.tie_break)
        return SplitAssigner(kind=s.kind, pinned=pinned, group_by=s.group_by, groups=groups)
    n = totals["eligible"]
    ranks = (round(n * s.fractions[0]), round(n * (s.fractions[0] + s.fractions[1])))
    bounds = (totals["key_min"], totals["key_max"])

    def histograms(queries: list[tuple[float, float, bool, np.ndarray]]) -> list[np.ndarray]:
        parts = pstats.collect_list(
            parsed, pstats.block_histograms, kind=s.kind, pinned=pinned, queries=queries
        )
        return [np.sum([p[j] for p in parts], axis=0) for j in range(len(queries))]

    def collects(intervals: list[tuple[float, float, bool]]) -> list[pa.Table]:
        parts = pstats.collect_list(
            parsed,
            pstats.block_candidate_sets,
            kind=s.kind,
            pinned=pinned,
            intervals=intervals,
            tie_break=s.tie_break,
        )
        return [pa.concat_tables([p[j] for p in parts]) for j in range(len(intervals))]

    # both boundaries narrow in the same passes over the data
    first, second = locate_boundaries(list(ranks), n, bounds, histograms, collects, s.tie_break)
    return SplitAssigner(kind=s.kind, pinned=pinned, boundaries=(first, second))


def _scatter(parsed: Any, events: dict[int, Any], plan: Any, pieces: Path) -> None:
    """Encode every block of valid rows (and of behaviour-log events) and scatter it into
    per-shard pieces (``pieces.scatter``); ``plan`` is the ObjectRef of the ``EncodePlan``."""
    parsed.map_batches(
        _scatter_rows,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={"plan": plan, "folder": str(pieces / "rows")},
    ).materialize()
    for index, ds in events.items():
        ds.map_batches(
            _scatter_events,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"plan": plan, "folder": str(pieces / "events"), "sequence": index},
        ).materialize()


def _finish(plan: Any, num_shards: int, pieces: Path, total: int, progress: bool) -> list[dict]:
    """Finish and write each shard from its pieces (one task per shard); the files' records."""
    import ray.data
    from tqdm.auto import tqdm

    shards = ray.data.from_items(
        [{"shard": s} for s in range(num_shards)], override_num_blocks=_num_tasks(num_shards)
    )
    written = shards.map_batches(
        _finish_shards,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={"plan": plan, "folder": str(pieces)},
    )
    records: list[dict] = []
    with tqdm(total=total, unit="rows", desc="rows written", disable=not progress) as bar:
        for batch in written.iter_batches(batch_format="pyarrow", batch_size=None):
            for record in batch.to_pylist():
                records.append(record)
                bar.update(record["rows"])
    return sorted(records, key=lambda r: r["path"])


def _num_tasks(items: int) -> int:
    """Ray tasks for a pass over ``items`` (read tasks, parsed files, shards): at most
    ``TASKS_PER_CPU`` per CPU of the cluster, each running its items one after the other.
    Every Ray task costs a scheduling round trip (0.15-0.25 s per task on a busy 2-core box,
    measured at 10M rows: up to a third of a pass) while more tasks only shorten the tail."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(items, TASKS_PER_CPU * max(1, cpus)))


def _piece_name(rows: pa.Table, prefix: str = "") -> str:
    first = pc.min(rows.column(ROW_COLUMN)).as_py()
    return f"{prefix}{first:016x}{SUFFIX}"


def _scatter_rows(parsed: pa.Table, plan: Any, folder: str) -> pa.Table:
    import ray

    plan = ray.get(plan)
    valid = parsed.filter(pc.is_null(parsed.column(REASON_COLUMN)))
    encoded = encode_batch(valid, plan)
    shards = np.asarray(encoded.column(SHARD_COLUMN), dtype=np.int64)
    path = Path(folder) / _piece_name(parsed)
    scatter(encoded.drop_columns([SHARD_COLUMN]), shards, plan.num_shards, path)
    return pa.table({"rows": [encoded.num_rows]})


def _scatter_events(parsed: pa.Table, plan: Any, folder: str, sequence: int) -> pa.Table:
    import ray

    plan = ray.get(plan)
    encoded = encode_events(parsed, plan, sequence)
    shards = np.asarray(encoded.column(SHARD_COLUMN), dtype=np.int64)
    path = Path(folder) / _piece_name(parsed, prefix=f"{sequence:03d}-")
    scatter(encoded.drop_columns([SHARD_COLUMN]), shards, plan.num_shards, path)
    return pa.table({"rows": [encoded.num_rows]})


def _finish_shards(items: pa.Table, plan: Any, folder: str) -> pa.Table:
    import ray

    plan = ray.get(plan)
    records = []
    for shard in items.column("shard").to_pylist():
        rows = gather(Path(folder) / "rows", shard)
        if rows is not None:
            events = gather(Path(folder) / "events", shard)
            records.append(finish_shard(shard, rows, events, plan))
    return pa.concat_tables(records) if records else RECORD_SCHEMA.empty_table()


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data's progress bars on or off for this call only (restored afterwards)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = progress
    try:
        yield
    finally:
        context.enable_progress_bars = saved
