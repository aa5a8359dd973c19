"""Vocabularies: fitting order and min count, OOV and padding, hashing, identity, closed."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pyarrow as pa

from hmoe.platform.data.spec import VocabSpec
from hmoe.platform.data.vocab import Vocabulary, count_values, fit_vocabulary, merge_counts
from hmoe.schema import OOV_INDEX, PAD_INDEX


def _fit(spec: VocabSpec, blocks: list[list[str | None]]) -> Vocabulary:
    counts = merge_counts([count_values(pa.array(b, pa.string())) for b in blocks])
    return fit_vocabulary(spec, counts, max_id=-1)


def test_fit_orders_by_count_then_value_and_drops_rare() -> None:
    blocks = [["b", "a", "c", "b", None], ["a", "b", "d", "d"]]
    vocab = _fit(VocabSpec(min_count=2), blocks)
    assert vocab.values == ("b", "a", "d")  # b:3, then a:2 and d:2 by value; c:1 is dropped
    assert vocab.size == 5
    encoded = vocab.encode(pa.array(["a", "b", "c", None, "zzz", "d"]))
    np.testing.assert_array_equal(encoded, [3, 2, OOV_INDEX, PAD_INDEX, OOV_INDEX, 4])


def test_fit_does_not_depend_on_partitioning() -> None:
    values = [f"v{i % 7}" for i in range(100)]
    one = _fit(VocabSpec(), [values])
    many = _fit(VocabSpec(), [values[i : i + 9] for i in range(0, 100, 9)])
    assert one.values == many.values


def test_max_size_keeps_the_most_frequent() -> None:
    vocab = _fit(VocabSpec(max_size=2), [["x", "y", "y", "z", "z", "z"]])
    assert vocab.values == ("z", "y")


def test_multi_valued_counts_every_token() -> None:
    counts = count_values(pa.array([["a", "b"], ["a"], None], pa.list_(pa.string())))
    assert dict(
        zip(counts.column("value").to_pylist(), counts.column("count").to_pylist(), strict=True)
    ) == {"a": 2, "b": 1}


def test_hash_is_crc32_and_stable_across_processes() -> None:
    vocab = fit_vocabulary(VocabSpec(mode="hash", hash_size=13), merge_counts([]), -1)
    values = ["alpha", "beta", "gamma", "alpha", None]
    expected = [2 + zlib.crc32(v.encode()) % 13 for v in values[:4]] + [PAD_INDEX]
    np.testing.assert_array_equal(vocab.encode(pa.array(values)), expected)
    assert vocab.size == 15
    code = (
        "import pyarrow as pa; from hmoe.platform.data.vocab import Vocabulary;"
        "print(Vocabulary(mode='hash', hash_size=13).encode(pa.array(['alpha','beta'])).tolist())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert other.stdout.strip() == str([int(e) for e in expected[:2]])


def test_identity_shifts_ids_past_pad_and_oov() -> None:
    vocab = fit_vocabulary(VocabSpec(mode="identity"), merge_counts([]), max_id=9)
    assert vocab.size == 12  # ids 0..9 -> 2..11
    np.testing.assert_array_equal(vocab.encode(pa.array(["0", "9", None])), [2, 11, PAD_INDEX])


def test_closed_uses_declared_order() -> None:
    vocab = fit_vocabulary(VocabSpec(mode="closed", values=("m", "d")), merge_counts([]), -1)
    np.testing.assert_array_equal(vocab.encode(pa.array(["d", "m"])), [3, 2])
