"""The message layer of protocol 1 (docs/protocol.md §2-§3): requests and
replies as msgpack maps, tensors as ``{dtype, shape, data}`` maps.

Nothing here does I/O, so it can be tested and reused on its own.

Copies: an outgoing tensor is handed to msgpack as a view of the array's
memory (no copy unless the array is not C-contiguous little-endian), and
msgpack writes it once into the message. :func:`encode_request_parts` does
better for large tensors: it leaves them out of what msgpack writes, so that
the transport copies them once, straight into the NNG message. An incoming tensor becomes an array
with :func:`numpy.frombuffer` over the ``bytes`` msgpack made of it: no copy
beyond msgpack's own, and the array is **read-only** (``.copy()`` it to write).
:func:`unpack_views` unpacks a reply leaving its large bins as views of the
received message, for tensors that are copied elsewhere at once (the parts of
a sliced step, assembled into whole arrays).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, Final, Union

import msgpack
import numpy as np
import numpy.typing as npt

from .errors import ProtocolError, error_from_reply

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_DIMS",
    "HparamValue",
    "encode_request",
    "encode_request_parts",
    "decode_reply",
    "check_reply",
    "unpack_views",
    "encode_tensor",
    "decode_tensor",
    "contiguous_array",
]

PROTOCOL_VERSION: Final = 1
#: Most dimensions a tensor may have (docs/protocol.md §5).
MAX_DIMS: Final = 8

#: A hyperparameter value: float, int or bool (docs/protocol.md §3).
HparamValue = Union[float, int, bool]

_DTYPE_NAMES: Final[dict[np.dtype[Any], str]] = {
    np.dtype("<f4"): "f32",
    np.dtype("<f8"): "f64",
}
_WIRE_DTYPES: Final[dict[str, np.dtype[Any]]] = {v: k for k, v in _DTYPE_NAMES.items()}


def _pack_default(obj: object) -> object:
    """msgpack fallback: numpy scalars (np.float32(0.1), np.bool_) as Python
    values; memoryviews are packed as bin by msgpack itself."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send a {type(obj).__name__} over the optimd protocol")


def encode_request(op: str, request_id: int, fields: Mapping[str, object]) -> bytes:
    """One request message: ``{v: 1, id, op}`` plus ``fields`` (a large
    tensor's ``data`` aligned as :func:`encode_request_parts` says)."""
    return b"".join(encode_request_parts(op, request_id, fields))


#: A bin value at least this long is a part of its own in encode_request_parts,
#: and a tensor's ``data`` this long is aligned.
LARGE_BIN: Final = 1 << 16
#: The daemon receives a request as NNG's buffer holding REQ's 4-byte request
#: ID and then the body, the buffer's start 16-byte aligned: ``data`` at an
#: offset where 4 + offset is a multiple of 16 is read in place, anywhere
#: else it is copied first (docs/protocol.md §3, ``pad``).
_REQ_HEADER: Final = 4
_ALIGN: Final = 16


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 1 << 16:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def encode_request_parts(op: str, request_id: int, fields: Mapping[str, object]) -> list[Any]:
    """The message of :func:`encode_request`, byte for byte, as a list of
    buffers to be written one after another: msgpack's bytes for everything
    but large bin values (:data:`LARGE_BIN` or more, a tensor's ``data``),
    which appear as themselves, not copied. A tensor map with such ``data``
    gets a ``pad`` key before it, sized so that the daemon can read the
    tensor where it lies in the message."""
    body: dict[str, object] = {"v": PROTOCOL_VERSION, "id": request_id, "op": op}
    body.update(fields)
    parts: list[Any] = []
    small = bytearray()
    flushed = 0

    def large(view: memoryview) -> None:
        nonlocal small, flushed
        small += _bin_header(view.nbytes)
        parts.append(bytes(small))
        flushed += len(small)
        small = bytearray()
        parts.append(view)
        flushed += view.nbytes

    def walk(obj: object) -> None:
        nonlocal small
        data = obj.get("data") if isinstance(obj, dict) else None
        if (isinstance(data, (bytes, bytearray, memoryview)) and memoryview(data).nbytes >= LARGE_BIN
                and "dtype" in obj and "pad" not in obj):
            assert isinstance(obj, dict)
            small += _map_header(len(obj) + 1)
            for key, value in obj.items():
                if key != "data":
                    small += msgpack.packb(key, use_bin_type=True)
                    walk(value)
            # "pad" (4 bytes), its bin8 header (2), k bytes, "data" (5) and
            # the bin32 header (5), then the tensor.
            at = flushed + len(small) + 4 + 2 + 5 + 5
            k = -(_REQ_HEADER + at) % _ALIGN
            small += b"\xa3pad" + _bin_header(k) + bytes(k) + b"\xa4data"
            large(memoryview(data).cast("B"))
        elif isinstance(obj, dict):
            small += _map_header(len(obj))
            for key, value in obj.items():
                small += msgpack.packb(key, use_bin_type=True, default=_pack_default)
                walk(value)
        elif isinstance(obj, (bytes, bytearray, memoryview)) and memoryview(obj).nbytes >= LARGE_BIN:
            large(memoryview(obj).cast("B"))
        else:
            small += msgpack.packb(obj, use_bin_type=True, default=_pack_default)

    walk(body)
    if small:
        parts.append(bytes(small))
    return parts


def decode_reply(message: Any, request_id: int) -> dict[str, Any]:
    """The result keys of a success reply to request ``request_id``.

    ``message`` is any buffer holding one reply. Raises the
    :class:`~optimd.OptimdError` subclass of an error reply, and
    :class:`~optimd.ProtocolError` for anything that is not a valid reply.
    """
    try:
        reply = msgpack.unpackb(message, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"the reply is not msgpack: {exc}") from exc
    return check_reply(reply, request_id)


def check_reply(reply: Any, request_id: int) -> dict[str, Any]:
    """:func:`decode_reply` for a reply already unpacked (by msgpack, or by
    :func:`unpack_views`)."""
    if not isinstance(reply, dict):
        raise ProtocolError(f"the reply is a {type(reply).__name__}, not a map")
    if reply.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"the reply has protocol version {reply.get('v')!r}, not 1")
    ok = reply.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("the reply has no boolean 'ok'")
    reply_id = reply.get("id")
    # An error about an undecodable request carries id 0 (protocol.md §2).
    if reply_id != request_id and not (not ok and reply_id == 0):
        raise ProtocolError(f"the reply has id {reply_id!r}, the request {request_id}")
    if not ok:
        code, name, text = reply.get("code"), reply.get("error"), reply.get("message")
        if not isinstance(code, int) or isinstance(code, bool):
            raise ProtocolError("an error reply without an integer 'code'")
        raise error_from_reply(
            code,
            name if isinstance(name, str) else f"E{code}",
            text if isinstance(text, str) else "",
            reply_id,
        )
    return reply


_FLOAT32: Final = struct.Struct(">f")
_FLOAT64: Final = struct.Struct(">d")


def unpack_views(message: Any, min_view: int = LARGE_BIN) -> Any:
    """One msgpack value from ``message`` (any buffer), as
    :func:`msgpack.unpackb` with ``raw=False`` gives it, except that a bin
    of ``min_view`` bytes or more is a :class:`memoryview` of ``message``
    rather than a copy: valid only as long as ``message`` is. For replies
    whose tensors are copied once more anyway (the parts of a sliced step,
    assembled into whole arrays), so that they are not copied twice.
    Raises :class:`~optimd.ProtocolError` for anything that is not one
    msgpack value, for ext types and for map keys other than str and bin
    (which msgpack's default ``strict_map_key`` refuses too)."""
    view = memoryview(message).cast("B")
    end = len(view)

    def need(at: int, n: int) -> int:
        if at + n > end:
            raise ProtocolError("the reply is not msgpack: truncated")
        return at + n

    def uint(at: int, n: int) -> tuple[int, int]:
        nxt = need(at, n)
        return int.from_bytes(view[at:nxt], "big"), nxt

    def value(at: int, depth: int) -> tuple[Any, int]:
        if depth > 64:
            raise ProtocolError("the reply is not msgpack: nested too deep")
        at = need(at, 1)
        b = view[at - 1]
        if b <= 0x7F:
            return b, at
        if b >= 0xE0:
            return b - 0x100, at
        if 0x80 <= b <= 0x8F:
            return container(at, b & 0x0F, True, depth)
        if 0x90 <= b <= 0x9F:
            return container(at, b & 0x0F, False, depth)
        if 0xA0 <= b <= 0xBF:
            return text(at, b & 0x1F)
        if b == 0xC0:
            return None, at
        if b == 0xC2:
            return False, at
        if b == 0xC3:
            return True, at
        if 0xC4 <= b <= 0xC6:
            n, at = uint(at, 1 << (b - 0xC4))
            nxt = need(at, n)
            return (view[at:nxt] if n >= min_view else bytes(view[at:nxt])), nxt
        if b == 0xCA:
            nxt = need(at, 4)
            return _FLOAT32.unpack_from(view, at)[0], nxt
        if b == 0xCB:
            nxt = need(at, 8)
            return _FLOAT64.unpack_from(view, at)[0], nxt
        if 0xCC <= b <= 0xCF:
            return uint(at, 1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            nxt = need(at, n)
            return int.from_bytes(view[at:nxt], "big", signed=True), nxt
        if 0xD9 <= b <= 0xDB:
            n, at = uint(at, 1 << (b - 0xD9))
            return text(at, n)
        if b in (0xDC, 0xDD):
            n, at = uint(at, 2 if b == 0xDC else 4)
            return container(at, n, False, depth)
        if b in (0xDE, 0xDF):
            n, at = uint(at, 2 if b == 0xDE else 4)
            return container(at, n, True, depth)
        raise ProtocolError(f"the reply is not msgpack this client reads: type byte 0x{b:02x}")

    def text(at: int, n: int) -> tuple[str, int]:
        nxt = need(at, n)
        try:
            return str(view[at:nxt], "utf-8"), nxt
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"the reply is not msgpack: {exc}") from exc

    def container(at: int, n: int, is_map: bool, depth: int) -> tuple[Any, int]:
        if is_map:
            out: dict[Any, Any] = {}
            for _ in range(n):
                key, at = value(at, depth + 1)
                if not isinstance(key, (str, bytes)):   # msgpack's strict_map_key
                    raise ProtocolError(f"the reply is not msgpack this client reads: a {type(key).__name__} key")
                out[key], at = value(at, depth + 1)
            return out, at
        items = []
        for _ in range(n):
            item, at = value(at, depth + 1)
            items.append(item)
        return items, at

    if end == 0:
        raise ProtocolError("the reply is not msgpack: empty")
    result, at = value(0, 0)
    if at != end:
        raise ProtocolError(f"the reply is not msgpack: {end - at} bytes after the value")
    return result


def contiguous_array(value: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]:
    """``value`` as a C-contiguous little-endian float32 or float64 array of
    at most :data:`MAX_DIMS` dimensions: the array itself (or a view of it)
    when it already is one, else one copy. Other dtypes raise
    :class:`TypeError`, more dimensions :class:`ValueError`."""
    array = np.asarray(value)
    if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):
        raise TypeError(f"optimd tensors are float32 or float64, not {array.dtype}")
    if array.ndim > MAX_DIMS:
        raise ValueError(f"a tensor has at most {MAX_DIMS} dimensions, not {array.ndim}")
    # Not ascontiguousarray: it turns a 0-dim array into a 1-dim one.
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def encode_tensor(value: npt.ArrayLike) -> dict[str, object]:
    """A tensor map for an f32 or f64 array (any array-like: numpy arrays,
    CPU torch tensors, nested lists of floats).

    The array's memory is referenced, not copied, when it is C-contiguous and
    little-endian; otherwise one contiguous little-endian copy is made. Other
    dtypes raise :class:`TypeError` (the daemon requires the parameter's own
    dtype, so nothing is converted silently).
    """
    array = contiguous_array(value)
    return {
        "dtype": _DTYPE_NAMES[array.dtype],
        "shape": list(array.shape),
        # A 1-D byte view: msgpack packs a memoryview as bin, straight from
        # the array's memory.
        "data": array.reshape(-1).view(np.uint8).data,
    }


def decode_tensor(value: Any, what: str = "tensor") -> npt.NDArray[np.floating[Any]]:
    """A read-only array viewing a received tensor map's ``data`` (bytes,
    or a memoryview from :func:`unpack_views`)."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a tensor map")
    dtype = _WIRE_DTYPES.get(value.get("dtype"))  # type: ignore[arg-type]
    shape = value.get("shape")
    data = value.get("data")
    if dtype is None:
        raise ProtocolError(f"{what} has dtype {value.get('dtype')!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"{what} has shape {shape!r}")
    if not isinstance(data, (bytes, memoryview)):
        raise ProtocolError(f"{what} has no binary data")
    nbytes = data.nbytes if isinstance(data, memoryview) else len(data)
    if nbytes != dtype.itemsize * math.prod(shape):
        raise ProtocolError(f"{what}: {nbytes} bytes for shape {shape} of {value['dtype']}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    array.flags.writeable = False   # already so over bytes; a memoryview may be writable
    return array
