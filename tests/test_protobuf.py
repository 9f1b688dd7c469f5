"""``llama.tokenizers.protobuf``: the hand-written wire-format reader, against bytes written independently."""

from __future__ import annotations

import struct

import pytest
from helpers import pb_field, pb_varint
from hypothesis import given
from hypothesis import strategies as st

from llama.tokenizers.protobuf import as_float32, as_int32, as_text, iter_fields, read_varint


def test_wire_format_by_hand():
    # Protobuf's documentation example: field 1, varint 150 is 08 96 01.
    assert list(iter_fields(b"\x08\x96\x01")) == [(1, 150)]
    # field 2, string "hi"; field 3, float32 1.5
    assert list(iter_fields(b"\x12\x02hi\x1d" + struct.pack("<f", 1.5))) == [(2, b"hi"), (3, struct.pack("<f", 1.5))]
    # int32 -1 is a 10-byte varint
    pad = b"\x12\x0b" + b"\xd8\x02" + b"\xff" * 9 + b"\x01"
    assert list(iter_fields(pad[2:])) == [(43, 2**64 - 1)]
    assert as_int32(2**64 - 1) == -1
    # field 4, fixed64 (wire type 1): 8 bytes, returned as they are
    assert list(iter_fields(b"\x21" + bytes(range(8)))) == [(4, bytes(range(8)))]


def test_read_varint_returns_the_next_offset():
    assert read_varint(b"\x00\x96\x01\x05", 1) == (150, 3)
    assert read_varint(b"\x7f", 0) == (127, 1)
    assert read_varint(b"\x80\x01", 0) == (128, 2)


fields = st.lists(st.tuples(st.integers(1, 2**29 - 1), st.one_of(st.integers(0, 2**64 - 1), st.binary(max_size=300))),
                  max_size=20)


@given(fields)
def test_reads_back_what_an_independent_writer_wrote(items):
    data = b"".join(pb_field(n, v) for n, v in items)
    assert list(iter_fields(data)) == items


@given(st.integers(0, 2**64 - 1))
def test_varints_round_trip(value):
    data = pb_varint(value)
    assert read_varint(data, 0) == (value, len(data))


@given(fields.filter(bool), st.data())
def test_every_truncation_is_an_error_or_a_prefix(items, data):
    """Cutting the data inside a field never yields a wrong value: it fails, or stops at a field boundary."""
    blob = b"".join(pb_field(n, v) for n, v in items)
    cut = data.draw(st.integers(0, len(blob) - 1))
    try:
        got = list(iter_fields(blob[:cut]))
    except ValueError:
        return
    assert got == items[: len(got)]
    assert b"".join(pb_field(n, v) for n, v in got) == blob[:cut]


def test_malformed_data_is_refused():
    with pytest.raises(ValueError, match="truncated varint"):
        read_varint(b"\x96", 0)
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        read_varint(b"\xff" * 10 + b"\x01", 0)
    with pytest.raises(ValueError, match="field number 0"):
        list(iter_fields(b"\x00\x01"))
    with pytest.raises(ValueError, match="unsupported wire type 3"):
        list(iter_fields(b"\x0b"))  # field 1, wire type 3 (a deprecated group)
    with pytest.raises(ValueError, match="field 2 runs past the end"):
        list(iter_fields(b"\x12\x05abc"))
    with pytest.raises(ValueError, match="field 5 runs past the end"):
        list(iter_fields(b"\x2d\x00\x00"))  # float32 with 2 of its 4 bytes


def test_values_by_schema_type():
    assert as_float32(struct.pack("<f", -2.5)) == -2.5
    assert as_text("é".encode()) == "é"
    assert (as_int32(5), as_int32(2**63), as_int32(2**63 - 1)) == (5, -(2**63), 2**63 - 1)
    with pytest.raises(ValueError, match="expected a string"):
        as_text(7)
    with pytest.raises(ValueError):
        as_text(b"\xff")  # not UTF-8
    with pytest.raises(ValueError, match="expected a 4-byte float"):
        as_float32(b"\x00" * 8)
    with pytest.raises(ValueError, match="expected a varint"):
        as_int32(b"\x01")
