"""msgpack on the wire, with limits checked before and during parsing.

Everything a node parses came from a stranger, so decoding is defensive in three layers:

1. **Before parsing**: the input length is checked against ``Limits.max_bytes``.
2. **During parsing**: ``scan()`` walks the msgpack structure *without building objects*
   and rejects, at the first offending byte, nesting deeper than ``max_depth``, containers
   or strings longer than their caps, declared lengths that run past the end of the input
   (the "huge declared length" bomb: an array header claiming 2^32 items in 5 bytes),
   ext types, reserved bytes and trailing bytes.  Only then does the C decoder run, with the
   same caps, ``strict_map_key=True`` and a pairs hook that rejects duplicate and non-str keys.
3. **After parsing**: each message class checks the exact schema (``Fields``).

Framing is a u32 big-endian length prefix; ``FrameDecoder`` is sans-IO (feed bytes, get
payloads) and refuses an oversize frame as soon as its header arrives.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .errors import (
    DepthError,
    DuplicateKeyError,
    ExtTypeError,
    MalformedError,
    NonStrKeyError,
    OversizeError,
    SchemaError,
    TrailingBytesError,
    TruncatedError,
)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Byte and shape limits for one kind of input (python-tuf ``ngclient/config.py`` style)."""

    max_bytes: int = 64 * 1024
    max_depth: int = 8
    max_container_len: int = 4096
    max_str_len: int = 4096
    max_bin_len: int = 64 * 1024
    max_items: int = 20_000  # total scalars + containers in one message


#: Signed documents.  A release record of a 1 GiB artifact at 256 KiB chunks lists 4096
#: chunk hashes (~140 KiB), so documents get a larger byte cap than gossip messages.
DOCUMENT_LIMITS: Final = Limits(
    max_bytes=1024 * 1024, max_bin_len=1024 * 1024, max_container_len=65_536, max_items=200_000
)
#: Gossip and other small messages (README "Gossip and links": <= 1,200 B on the wire).
MESSAGE_LIMITS: Final = Limits(max_bytes=16 * 1024, max_container_len=1024, max_items=4096)


# -- encoding ---------------------------------------------------------------------------


def encode(obj: Any) -> bytes:
    """Encode canonically enough for our purposes: bin for bytes, str for str, no ext.

    Signatures are always checked over the exact bytes received, never over a re-encoding,
    so encoding need not be canonical; it only needs to be deterministic for equal inputs.
    """
    try:
        out: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:  # a programming error, not input
        raise ValueError(f"cannot encode {type(obj).__name__}: {exc}") from exc
    return out


# -- structural scan (no allocation) ----------------------------------------------------

_FIXED_WIDTH: Final[dict[int, int]] = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float32, float64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int
}  # fmt: skip
_EXT_BYTES: Final = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
_LEN_WIDTH: Final = {1: ">B", 2: ">H", 4: ">I"}


def _read_len(data: bytes, pos: int, width: int) -> int:
    if pos + width > len(data):
        raise TruncatedError(f"length field at byte {pos} runs past the end of the input")
    value: int = struct.unpack_from(_LEN_WIDTH[width], data, pos)[0]
    return value


def scan(data: bytes, limits: Limits) -> None:
    """Walk one msgpack object in ``data`` and enforce ``limits`` without decoding it.

    Raises a ``WireError`` subclass at the first violation.  Every container element takes at
    least one byte, so a container length larger than the bytes left is rejected here,
    before any decoder could try to allocate it.
    """
    if len(data) > limits.max_bytes:
        raise OversizeError(f"{len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if not data:
        raise TruncatedError("empty input")
    end = len(data)
    pos = 0
    items = 0
    # Each stack entry: number of objects still expected in an open container.
    stack: list[int] = [1]
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        if pos >= end:
            raise TruncatedError("input ends inside a container")
        items += 1
        if items > limits.max_items:
            raise OversizeError(f"more than {limits.max_items} objects in one message")
        b = data[pos]
        pos += 1
        container = -1  # element count of a container opened by this byte
        blob = -1  # length of a str/bin payload following this byte
        is_str = is_map = False
        if b <= 0x7F or b >= 0xE0:
            continue
        if 0x80 <= b <= 0x8F:
            container, is_map = 2 * (b & 0x0F), True
        elif 0x90 <= b <= 0x9F:
            container = b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            blob, is_str = b & 0x1F, True
        elif b in _FIXED_WIDTH:
            pos += _FIXED_WIDTH[b]
            if pos > end:
                raise TruncatedError("number runs past the end of the input")
            continue
        elif b in (0xC4, 0xC5, 0xC6):
            width = 1 << (b - 0xC4)
            blob = _read_len(data, pos, width)
            pos += width
        elif b in (0xD9, 0xDA, 0xDB):
            width = 1 << (b - 0xD9)
            blob, is_str = _read_len(data, pos, width), True
            pos += width
        elif b in (0xDC, 0xDD):
            width = 2 if b == 0xDC else 4
            container = _read_len(data, pos, width)
            pos += width
        elif b in (0xDE, 0xDF):
            width = 2 if b == 0xDE else 4
            container, is_map = 2 * _read_len(data, pos, width), True
            pos += width
        elif b in _EXT_BYTES:
            raise ExtTypeError(f"ext type at byte {pos - 1} (ext types are never accepted)")
        else:  # 0xC1 is reserved
            raise MalformedError(f"reserved byte 0x{b:02x} at {pos - 1}")

        if blob >= 0:
            cap = limits.max_str_len if is_str else limits.max_bin_len
            if blob > cap:
                kind = "string" if is_str else "binary"
                raise OversizeError(f"{kind} of {blob} bytes exceeds the limit of {cap}")
            if pos + blob > end:
                raise TruncatedError(f"declared length {blob} runs past the end of the input")
            pos += blob
        elif container >= 0:
            entries = container // 2 if is_map else container
            if entries > limits.max_container_len:
                raise OversizeError(
                    f"container of {entries} entries exceeds the limit of "
                    f"{limits.max_container_len}"
                )
            if container > end - pos:
                raise TruncatedError(
                    f"container declares {container} entries but only {end - pos} bytes remain"
                )
            if container:
                # stack[0] is the top-level slot, so len(stack) open containers after this one
                if len(stack) > limits.max_depth:
                    raise DepthError(f"nesting deeper than {limits.max_depth}")
                stack.append(container)
    if pos != end:
        raise TrailingBytesError(f"{end - pos} bytes after the message")


def _pairs_hook(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if not isinstance(key, str):
            raise NonStrKeyError(f"map key of type {type(key).__name__}")
        if key in out:
            raise DuplicateKeyError(f"map key {key!r} appears twice")
        out[key] = value
    return out


def _no_ext(code: int, data: bytes) -> Any:
    raise ExtTypeError(f"ext type {code}")


def decode(data: bytes, limits: Limits = MESSAGE_LIMITS) -> Any:
    """Decode exactly one msgpack object from ``data`` under ``limits``.

    Raises only ``WireError`` subclasses, whatever the input.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    scan(data, limits)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_pairs_hook,
            ext_hook=_no_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len,
            max_ext_len=0,
        )
    except (DuplicateKeyError, NonStrKeyError, ExtTypeError):
        raise
    except msgpack.ExtraData as exc:
        raise TrailingBytesError("bytes after the message") from exc
    except UnicodeDecodeError as exc:
        raise MalformedError("string is not valid UTF-8") from exc
    except ValueError as exc:
        text = str(exc)
        if "map key" in text:
            raise NonStrKeyError(f"map key of a non-str type ({text})") from exc
        if "exceeds max" in text:
            raise OversizeError(text) from exc
        raise MalformedError(text) from exc
    except Exception as exc:  # FormatError, StackError, anything else: still the input's fault
        raise MalformedError(f"{type(exc).__name__}: {exc}") from exc


# -- framing ----------------------------------------------------------------------------

FRAME_HEADER: Final = struct.Struct(">I")


def frame(payload: bytes, max_frame: int = MESSAGE_LIMITS.max_bytes) -> bytes:
    """Prefix ``payload`` with its u32 big-endian length."""
    if len(payload) > max_frame:
        raise OversizeError(f"frame of {len(payload)} bytes exceeds the limit of {max_frame}")
    return FRAME_HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Sans-IO splitter of u32-length-prefixed frames.

    ``feed(data)`` returns the complete payloads now available.  A header announcing more
    than ``max_frame`` bytes raises ``OversizeError`` at once, before its body is buffered,
    and the decoder is then dead (the link must be closed: its framing is lost).
    """

    def __init__(self, max_frame: int = MESSAGE_LIMITS.max_bytes) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._dead = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._dead:
            raise MalformedError("frame decoder already failed; close the link")
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(self._buf)
            if length > self.max_frame:
                self._dead = True
                raise OversizeError(
                    f"frame header announces {length} bytes; limit is {self.max_frame}"
                )
            total = FRAME_HEADER.size + length
            if len(self._buf) < total:
                break
            out.append(bytes(self._buf[FRAME_HEADER.size : total]))
            del self._buf[:total]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered toward an incomplete frame."""
        return len(self._buf)

    @property
    def needed(self) -> int:
        """Bytes still to come before the frame buffered now is complete (its header's
        length once that is in; else what completes the header)."""
        if len(self._buf) < FRAME_HEADER.size:
            return FRAME_HEADER.size - len(self._buf)
        length: int = FRAME_HEADER.unpack_from(self._buf)[0]
        return max(0, FRAME_HEADER.size + length - len(self._buf))


# -- schema checking --------------------------------------------------------------------

Check = Callable[[str, Any], Any]

#: A bad value named in an error message is cut to this many characters.
MAX_SHOWN: Final = 40


def shown(value: Any) -> str:
    """The bad value, for an error message: short enough for one log line, whatever it is.

    Numbers, booleans and None as Python writes them (``nan``, ``-1.5``, ``True``): an
    operator reading "expected finite number, got nan" knows what to look for, where "got
    float" says nothing.  Strings and bytes are cut to ``MAX_SHOWN`` characters (the
    message is from a stranger), containers are named with their length.
    """
    if value is None or isinstance(value, bool | float):
        text = repr(value)
    elif isinstance(value, int):
        text = (
            repr(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        )
    elif isinstance(value, str | bytes | bytearray):
        text = repr(value[: MAX_SHOWN + 1])
    elif isinstance(value, list | tuple | dict):
        text = f"a {type(value).__name__} of {len(value)} entries"
    else:
        text = f"a value of type {type(value).__name__}"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _fail(name: str, want: str, value: Any) -> SchemaError:
    return SchemaError(f"field {name!r}: expected {want}, got {shown(value)}")


def uint(max_value: int = 2**63 - 1) -> Check:
    """Non-negative int (bool excluded) up to ``max_value``."""

    def check(name: str, v: Any) -> int:
        if type(v) is not int or v < 0 or v > max_value:
            raise _fail(name, f"integer in [0, {max_value}]", v)
        return v

    return check


def text(max_len: int = 256, *, nonempty: bool = False) -> Check:
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or len(v) > max_len or (nonempty and not v):
            what = "non-empty string" if nonempty else "string"
            raise _fail(name, f"{what} of at most {max_len} chars", v)
        return v

    return check


def blob(length: int | None = None, max_len: int = 4096) -> Check:
    def check(name: str, v: Any) -> bytes:
        if not isinstance(v, bytes):
            raise _fail(name, "bytes", v)
        if length is not None and len(v) != length:
            raise SchemaError(f"field {name!r}: expected {length} bytes, got {len(v)}")
        if len(v) > max_len:
            raise SchemaError(f"field {name!r}: more than {max_len} bytes")
        return v

    return check


def boolean() -> Check:
    def check(name: str, v: Any) -> bool:
        if type(v) is not bool:
            raise _fail(name, "bool", v)
        return v

    return check


def unit_float() -> Check:
    """A finite float in [0, 1] (ints 0 and 1 are accepted and converted)."""

    def check(name: str, v: Any) -> float:
        if type(v) is int and v in (0, 1):
            return float(v)
        if type(v) is not float or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise _fail(name, "finite float in [0, 1]", v)
        return v

    return check


def nonneg_float(max_value: float = 1e18) -> Check:
    def check(name: str, v: Any) -> float:
        if type(v) is int and 0 <= v <= max_value:
            return float(v)
        if type(v) is not float or not math.isfinite(v) or not 0.0 <= v <= max_value:
            raise _fail(name, f"finite number in [0, {max_value}]", v)
        return v

    return check


_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def hex_digest() -> Check:
    """A lowercase hex sha256 (64 chars): artifact hashes and key ids."""

    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or _HEX64.fullmatch(v) is None:
            raise _fail(name, "64 lowercase hex chars", v)
        return v

    return check


def one_of(*choices: str) -> Check:
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or v not in choices:
            raise _fail(name, f"one of {', '.join(choices)}", v)
        return v

    return check


def array(item: Check, max_len: int = 4096, *, unique: bool = False) -> Check:
    def check(name: str, v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise _fail(name, "array", v)
        if len(v) > max_len:
            raise SchemaError(f"field {name!r}: more than {max_len} entries")
        out = tuple(item(f"{name}[{i}]", x) for i, x in enumerate(v))
        if unique and len(set(out)) != len(out):
            raise SchemaError(f"field {name!r}: entries must be unique")
        return out

    return check


def mapping(key: Check, value: Check, max_len: int = 256) -> Check:
    def check(name: str, v: Any) -> dict[Any, Any]:
        if not isinstance(v, dict):
            raise _fail(name, "map", v)
        if len(v) > max_len:
            raise SchemaError(f"field {name!r}: more than {max_len} entries")
        return {key(f"{name} key", k): value(f"{name}[{k!r}]", x) for k, x in v.items()}

    return check


def record(fields: Mapping[str, Check]) -> Check:
    """A nested map with exactly ``fields``."""

    def check(name: str, v: Any) -> dict[str, Any]:
        return check_fields(v, fields, where=name)

    return check


def check_fields(obj: Any, fields: Mapping[str, Check], *, where: str) -> dict[str, Any]:
    """Exact schema check: ``obj`` must be a map with exactly the keys of ``fields``."""
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: expected a map, got {type(obj).__name__}")
    missing = [k for k in fields if k not in obj]
    extra = [k for k in obj if k not in fields]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(missing))}")
        if extra:
            parts.append(f"unknown {', '.join(sorted(map(str, extra)))}")
        raise SchemaError(f"{where}: {'; '.join(parts)}")
    return {k: check(k, obj[k]) for k, check in fields.items()}


def iter_frames(data: bytes, max_frame: int = MESSAGE_LIMITS.max_bytes) -> Iterator[bytes]:
    """Split a complete byte string of frames (tests, files); trailing partial data raises."""
    dec = FrameDecoder(max_frame)
    yield from dec.feed(data)
    if dec.pending:
        raise TruncatedError(f"{dec.pending} bytes of an incomplete frame")
