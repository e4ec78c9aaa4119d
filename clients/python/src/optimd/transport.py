"""REQ/REP v0 over NNG (pynng), as docs/protocol.md §1 asks:

* REQ's automatic resend is switched off (``req:resend-time`` infinite): a
  ``step`` is not idempotent, so a request is sent exactly once and a lost
  reply surfaces as :class:`~optimd.TransportError`, never as a second step.
* no receive size limit (NNG's default of 1 MiB would drop large replies);
* every request runs in its own NNG context, so one socket serves several
  threads, each with its own request in flight, and one thread can keep
  several requests in flight (:meth:`Transport.pipeline`, the parts of a
  sliced step);
* a ``tls+tcp://`` URL gets a client TLS configuration (pynng.TLSConfig):
  the CA that must have issued the daemon's certificate, optionally this
  client's own certificate and key, and the name the daemon's certificate
  must carry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, Union

import pynng

from .errors import OptimdError, RequestTimeout, TransportError

try:
    # pynng's cffi bindings, to fill an NNG message in place (see
    # _message); pynng documents Message(nng_msg *) as a constructor.
    from pynng._nng import ffi as _ffi
    from pynng._nng import lib as _lib
except ImportError:  # pragma: no cover - a pynng without them
    _ffi = _lib = None

__all__ = ["Transport"]

_T = TypeVar("_T")

#: What a request is sent as: bytes, or buffers to send back to back.
Payload = Union[bytes, "list[Any]"]

#: NNG_DURATION_INFINITE
_INFINITE = -1


def _millis(timeout: float | None) -> int:
    if timeout is None:
        return _INFINITE
    if timeout <= 0:
        raise ValueError(f"timeout must be positive or None, not {timeout}")
    return max(1, round(timeout * 1000))


def _url_host(url: str) -> str:
    """The host of ``scheme://HOST:PORT`` (brackets of an IPv6 host
    dropped); empty when there is none."""
    rest = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0]


def _read_pem(path: str, what: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} {path!r}: {exc}") from exc


def _tls_config(
    url: str,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    server_name: str | None,
) -> Any:
    """The client TLS configuration (a pynng.TLSConfig) for ``url``; None
    for a URL without TLS. Raises ValueError for options that do not fit the
    URL or each other, and for files that cannot be read or used."""
    given = any(v is not None for v in (ca_file, cert_file, key_file, server_name))
    if not url.startswith("tls+"):
        if given:
            raise ValueError(f"TLS options given for {url}: they need a tls+tcp:// URL")
        return None
    if ca_file is None:
        raise ValueError(f"{url} needs tls_ca_file, the CA that issued the daemon's certificate")
    if (cert_file is None) != (key_file is None):
        raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
    name = server_name if server_name is not None else _url_host(url)
    if not name:
        raise ValueError(f"no host in {url} to check the daemon's certificate against: "
                         "give tls_server_name")
    cert = _read_pem(cert_file, "tls_cert_file") if cert_file is not None else None
    key = _read_pem(key_file, "tls_key_file") if key_file is not None else None
    # Read here too, so that a missing CA file is named as such instead of
    # surfacing as NNG's bare error.
    _read_pem(ca_file, "tls_ca_file")
    try:
        # AUTH_MODE_REQUIRED is NNG's client default; said so that the
        # client can never end up accepting any daemon.
        return pynng.TLSConfig(
            pynng.TLSConfig.MODE_CLIENT,
            server_name=name,
            ca_files=[ca_file],
            own_cert_string=cert,
            own_key_string=key,
            auth_mode=pynng.TLSConfig.AUTH_MODE_REQUIRED,
        )
    except pynng.NNGException as exc:
        raise ValueError(f"cannot use the TLS files (CA {ca_file!r}, certificate "
                         f"{cert_file!r}, key {key_file!r}): {exc}") from exc


#: Appended to a failure on a TLS connection: a handshake the daemon or the
#: client refused shows up only as a failed dial or a timeout.
_TLS_HINT = ("; over TLS this is also what a refused handshake looks like: does tls_ca_file "
             "hold the CA that issued the daemon's certificate, does that certificate name "
             "tls_server_name, and does the daemon accept this client's certificate?")


def _message(parts: list[Any]) -> pynng.Message:
    """One NNG message holding ``parts`` back to back. Each part is copied
    once, into the message itself: b"".join would copy a tensor once more
    and pynng's send once more again (40 MB each for a 10M-parameter
    step)."""
    if _ffi is None:
        return pynng.Message(b"".join(parts))
    size = sum(memoryview(p).nbytes for p in parts)
    msg_p = _ffi.new("nng_msg **")
    rv = _lib.nng_msg_alloc(msg_p, size)
    if rv != 0:
        raise TransportError(f"cannot allocate a message of {size} bytes (NNG error {rv})")
    body = _ffi.buffer(_lib.nng_msg_body(msg_p[0]), size)
    at = 0
    for part in parts:
        n = memoryview(part).nbytes
        body[at:at + n] = part
        at += n
    return pynng.Message(msg_p[0])


class Transport:
    """One REQ socket dialled to ``url``.

    ``timeout`` (seconds, ``None`` for none) bounds both sending a request and
    waiting for its reply. With ``connect=True`` the constructor dials at once
    and raises :class:`TransportError` when nothing listens at ``url``; with
    ``connect=False`` it dials in the background (NNG keeps redialling) and a
    request waits for the connection up to ``timeout``. After a connection is
    lost, NNG redials by itself either way.

    The ``tls_*`` arguments are for a ``tls+tcp://`` URL (see
    :class:`optimd.Client`); any of them with another scheme, or a
    ``tls+tcp://`` URL without ``tls_ca_file``, raises ValueError.
    """

    def __init__(
        self,
        url: str,
        timeout: float | None,
        *,
        connect: bool = True,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        ms = _millis(timeout)
        self.url = url
        # Kept for the socket's lifetime, though NNG holds its own reference.
        self._tls = _tls_config(url, tls_ca_file, tls_cert_file, tls_key_file, tls_server_name)
        self._hint = _TLS_HINT if self._tls is not None else ""
        try:
            self._socket = pynng.Req0(
                resend_time=_INFINITE,
                recv_max_size=0,
                recv_timeout=ms,
                send_timeout=ms,
                # On the socket, before the dial: every dialer, NNG's
                # redials included, takes it from there.
                tls_config=self._tls,
            )
        except pynng.NNGException as exc:
            raise TransportError(f"cannot open a REQ socket: {exc}") from exc
        try:
            self._socket.dial(url, block=connect)
        except pynng.NNGException as exc:
            self._socket.close()
            raise TransportError(f"cannot connect to {url}: {exc}{self._hint}") from exc

    @property
    def resend_time(self) -> int:
        """The socket's ``req:resend-time`` in ms; -1 (infinite) means off."""
        return int(self._socket.resend_time)

    def _context(self) -> Any:
        try:
            return self._socket.new_context()
        except pynng.NNGException as exc:
            raise TransportError(f"{self.url}: {exc}") from exc

    def _send(self, ctx: Any, payload: Payload) -> None:
        try:
            if isinstance(payload, list):
                ctx.send_msg(_message(payload))
            else:
                ctx.send(payload)
        except pynng.Timeout as exc:
            raise RequestTimeout(f"{self.url}: no reply within the timeout{self._hint}") from exc
        except pynng.NNGException as exc:
            raise TransportError(f"{self.url}: {exc}{self._hint}") from exc

    def _receive(self, ctx: Any, decode: Callable[[Any], _T]) -> _T:
        try:
            msg = ctx.recv_msg()
        except pynng.Timeout as exc:
            raise RequestTimeout(f"{self.url}: no reply within the timeout{self._hint}") from exc
        except pynng.NNGException as exc:
            raise TransportError(f"{self.url}: {exc}{self._hint}") from exc
        # Message._buffer is pynng's documented view of the message body
        # (see pynng.Message); .bytes is the copying fallback.
        buffer = getattr(msg, "_buffer", None)
        return decode(buffer if buffer is not None else msg.bytes)

    @staticmethod
    def _close(ctx: Any) -> None:
        try:
            ctx.close()
        except pynng.NNGException:
            pass  # the socket was closed under us; the context went with it

    def roundtrip(self, payload: Payload, decode: Callable[[Any], _T]) -> _T:
        """Sends ``payload`` (bytes, or buffers to send one after another as
        one message) and returns ``decode(reply)``.

        ``decode`` gets a buffer over the received NNG message that is valid
        only during the call, so the reply is decoded without copying it out
        of NNG first.
        """
        ctx = self._context()
        try:
            self._send(ctx, payload)
            return self._receive(ctx, decode)
        finally:
            self._close(ctx)

    def pipeline(self, exchanges: Iterable[tuple[Payload, Callable[[Any], _T]]],
                 window: int) -> list[_T]:
        """Sends each ``(payload, decode)`` of ``exchanges`` as
        :meth:`roundtrip` does, in order, keeping up to ``window`` requests in
        flight at once (each in its own NNG context), and returns the
        ``decode(reply)`` of each, in order.

        The next payload is taken from ``exchanges`` only when it is to be
        sent, so it may be built lazily. The requests go out on the one
        connection in order: while the daemon works on one, the next is on
        the wire and this thread decodes the replies that came back.

        When a reply is an error reply (``decode`` raises
        :class:`~optimd.OptimdError`), nothing more is sent, the replies of
        the requests still in flight are waited for (their results, and their
        errors, dropped), and the first such error is raised. A transport
        failure (``decode`` raising :class:`~optimd.TransportError` included)
        is raised at once; the requests still in flight are abandoned, so
        whether they were applied is unknown.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        pending = iter(exchanges)
        in_flight: deque[tuple[Any, Callable[[Any], _T]]] = deque()
        results: list[_T] = []
        error: OptimdError | None = None
        exhausted = False
        try:
            while True:
                while error is None and not exhausted and len(in_flight) < window:
                    item = next(pending, None)
                    if item is None:
                        exhausted = True
                        break
                    payload, decode = item
                    ctx = self._context()
                    in_flight.append((ctx, decode))
                    self._send(ctx, payload)
                if not in_flight:
                    break
                ctx, decode = in_flight[0]
                try:
                    results.append(self._receive(ctx, decode))
                except OptimdError as exc:
                    if error is None:
                        error = exc
                in_flight.popleft()
                self._close(ctx)
        finally:
            for ctx, _ in in_flight:
                self._close(ctx)
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Closes the socket; requests in flight fail with TransportError."""
        self._socket.close()
