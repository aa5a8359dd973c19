"""Separate behaviour logs (``SequenceSpec.source = behaviour_log``): parse and encode events.

Events are validated like log rows (a missing user or item is ``missing_value``, a bad time is
``bad_timestamp``, a text line with the wrong number of fields is ``malformed_line``; invalid
events are dropped and counted in the manifest), encoded with the vocabularies of the
sequence's item and category fields, and sent to the shard of their user so that
``finish_shard`` sees a user's impressions and behaviours together. User and item values must
match the log's values as written (no transform is applied to them).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.spec import BehaviourLogSpec, DatasetSpec, SequenceSpec
from hmoe.platform.data.tables import MALFORMED_COLUMN, ROW_COLUMN, as_strings
from hmoe.platform.data.validate import REASON_COLUMN, TS_COLUMN, parse_timestamps

__all__ = [
    "EVENT_CATEGORY",
    "EVENT_ITEM",
    "EVENT_SEQUENCE",
    "RAW_CATEGORY",
    "RAW_ITEM",
    "USER",
    "parse_events",
]

EVENT_SEQUENCE = "__event_sequence"  # which sequence (index in spec.sequences) an event feeds
EVENT_ITEM = "__event_item"
EVENT_CATEGORY = "__event_category"
RAW_ITEM = "__event_item_raw"
RAW_CATEGORY = "__event_category_raw"
USER = "__user"


def _log(q: SequenceSpec) -> BehaviourLogSpec:
    assert q.behaviour_log is not None
    return q.behaviour_log


def parse_events(raw: pa.Table, spec: DatasetSpec, q: SequenceSpec) -> pa.Table:
    """Parsed events of one behaviour-log batch with ``__reason`` (null when valid)."""
    log = _log(q)
    n = raw.num_rows
    reason = np.full(n, None, dtype=object)
    if MALFORMED_COLUMN in raw.column_names:
        reason[np.asarray(raw.column(MALFORMED_COLUMN).is_valid(), dtype=bool)] = "malformed_line"
    columns = {}
    for key, name in ((USER, log.user_column), (RAW_ITEM, log.item_column)):
        values = pc.utf8_trim_whitespace(as_strings(raw.column(name)))
        missing = np.asarray(pc.or_(values.is_null(), pc.equal(values, "")).fill_null(True), bool)
        reason[missing & (reason == None)] = "missing_value"  # noqa: E711 - elementwise
        columns[key] = values
    category = None
    if log.category_column is not None:
        category = pc.utf8_trim_whitespace(as_strings(raw.column(log.category_column)))
    columns[RAW_CATEGORY] = category if category is not None else pa.nulls(n, pa.string())
    seconds, missing, bad = parse_timestamps(raw.column(log.timestamp_column), spec)
    reason[missing & (reason == None)] = "missing_value"  # noqa: E711
    reason[bad & (reason == None)] = "bad_timestamp"  # noqa: E711
    columns[TS_COLUMN] = pa.array(seconds)
    columns[ROW_COLUMN] = raw.column(ROW_COLUMN).combine_chunks()
    columns[REASON_COLUMN] = pa.array(reason, type=pa.string())
    return pa.table(columns)
