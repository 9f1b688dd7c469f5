r"""A protocol-buffer wire-format reader and writer, written by hand (no ``.proto`` compiler, no library).

A serialized protobuf message is a flat list of fields. Each field is a *key*, the varint
``field_number << 3 | wire_type``, followed by a value whose encoding the wire type gives:

| type | encoding | used for |
|---|---|---|
| 0 | varint: 7 bits per byte, low bits first, high bit set on all bytes but the last | ``int32``, ``int64``, ``bool``, enums |
| 1 | 8 fixed bytes, little-endian | ``double``, ``fixed64`` |
| 2 | a varint length, then that many bytes | strings, bytes, nested messages |
| 5 | 4 fixed bytes, little-endian | ``float``, ``fixed32`` |

The wire format does not say which of the meanings a value has: the reader must know the
schema. :func:`iter_fields` therefore hands out raw values (an ``int`` for wire type 0,
``bytes`` for the others), and the ``as_*`` helpers give them their schema type. A nested
message is just the ``bytes`` of a field, read with :func:`iter_fields` again.
:mod:`llama.tokenizers.spm_vocab` reads SentencePiece's ``ModelProto`` this way; the writer,
:func:`encode_field`, is what :mod:`llama.tokenizers.gguf_vocab` builds a ``.model`` with.

Examples:
    The example of protobuf's documentation, field 1 holding the varint 150, then field 2
    holding the string ``"hi"``:

    >>> list(iter_fields(b"\x08\x96\x01" + b"\x12\x02hi"))
    [(1, 150), (2, b'hi')]
    >>> as_text(b"hi"), as_int32(2**64 - 1)
    ('hi', -1)

    The writer gives the same bytes, which the reader reads back:

    >>> encode_field(1, 150) + encode_field(2, "hi") == b"\x08\x96\x01" + b"\x12\x02hi"
    True
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["read_varint", "iter_fields", "as_int32", "as_float32", "as_text", "encode_varint", "encode_field"]


# --8<-- [start:wire]
def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    r"""Read a base-128 varint at ``pos``: 7 bits per byte, low bits first, high bit = more.

    Args:
        buf: The serialized data.
        pos: Offset of the varint's first byte.

    Returns:
        The value and the offset just after the varint.

    Raises:
        ValueError: If the data ends inside the varint, or it is longer than 10 bytes
            (64 bits), which no valid message contains.

    Examples:
        >>> read_varint(b"\x96\x01", 0)
        (150, 2)
    """
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield ``(field number, value)`` for each field of a serialized protobuf message.

    A field starts with a varint key ``number << 3 | wire_type``. Wire type 0 is a varint,
    1 is 8 fixed bytes, 2 is a length-prefixed byte string (strings, bytes and nested
    messages alike), 5 is 4 fixed bytes. Values of wire types 1, 2 and 5 come out as bytes.
    A repeated field simply occurs several times.

    Args:
        buf: The serialized message.

    Yields:
        ``(field number, value)``, in the order of the data.

    Raises:
        ValueError: If the data is not a well-formed message: a truncated field, field
            number 0, or a wire type other than 0, 1, 2 and 5 (3 and 4 are the long-deprecated
            groups).
    """
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
        elif wire_type in (1, 2, 5):
            if wire_type == 2:
                size, pos = read_varint(buf, pos)
            else:
                size = 8 if wire_type == 1 else 4
            if pos + size > len(buf):
                raise ValueError(f"field {number} runs past the end of the data")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire_type} (field {number})")
        yield number, value
# --8<-- [end:wire]


# --8<-- [start:values]
def as_int32(value: int | bytes) -> int:
    """A varint as a protobuf ``int32``: negative numbers are sent as 64-bit two's complement.

    So ``-1`` arrives as ``2**64 - 1``, a 10-byte varint.

    Raises:
        ValueError: If ``value`` is not a varint (the field has another wire type).
    """
    if not isinstance(value, int):
        raise ValueError("expected a varint field")
    return value - (1 << 64) if value >= 1 << 63 else value


def as_float32(value: int | bytes) -> float:
    """A 4-byte field (wire type 5) as a protobuf ``float``: IEEE 754 single, little-endian.

    Raises:
        ValueError: If ``value`` is not 4 bytes (the field has another wire type).
    """
    if not (isinstance(value, bytes) and len(value) == 4):
        raise ValueError("expected a 4-byte float field")
    return struct.unpack("<f", value)[0]


def as_text(value: int | bytes) -> str:
    """A length-prefixed field (wire type 2) as a protobuf ``string``: UTF-8.

    Raises:
        ValueError: If ``value`` is not bytes (the field has another wire type), or not UTF-8
            (``UnicodeDecodeError`` is a ``ValueError``).
    """
    if not isinstance(value, bytes):
        raise ValueError("expected a string field")
    return value.decode("utf-8")
# --8<-- [end:values]


def encode_varint(n: int) -> bytes:
    """:func:`read_varint`'s inverse: 7 bits per byte, low bits first, high bit = more.

    >>> encode_varint(150), encode_varint(-1) == b"\\xff" * 9 + b"\\x01"
    (b'\\x96\\x01', True)
    """
    n &= (1 << 64) - 1  # negative int32 values are sent as 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def encode_field(number: int, value: int | float | str | bytes) -> bytes:
    """One field, its wire type chosen by the value's type: varint (``int``, ``bool``), 4-byte
    ``float`` (wire type 5), or length-delimited text, bytes or a nested message (wire type 2).

    >>> list(iter_fields(encode_field(3, 2.5) + encode_field(4, b"\\x08\\x01")))
    [(3, b'\\x00\\x00 @'), (4, b'\\x08\\x01')]
    """
    if isinstance(value, float):
        return encode_varint(number << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, int):
        return encode_varint(number << 3 | 0) + encode_varint(value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data
