"""REQ/REP v0 over NNG (pynng), as docs/protocol.md §1 asks:

* REQ's automatic resend is switched off (``req:resend-time`` infinite): a
  ``step`` is not idempotent, so a request is sent exactly once and a lost
  reply surfaces as :class:`~optimd.TransportError`, never as a second step.
* no receive size limit (NNG's default of 1 MiB would drop large replies);
* every request runs in its own NNG context, so one socket serves several
  threads, each with its own request in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pynng

from .errors import RequestTimeout, TransportError

__all__ = ["Transport"]

_T = TypeVar("_T")

#: NNG_DURATION_INFINITE
_INFINITE = -1


def _millis(timeout: float | None) -> int:
    if timeout is None:
        return _INFINITE
    if timeout <= 0:
        raise ValueError(f"timeout must be positive or None, not {timeout}")
    return max(1, round(timeout * 1000))


class Transport:
    """One REQ socket dialled to ``url``.

    ``timeout`` (seconds, ``None`` for none) bounds both sending a request and
    waiting for its reply. With ``connect=True`` the constructor dials at once
    and raises :class:`TransportError` when nothing listens at ``url``; with
    ``connect=False`` it dials in the background (NNG keeps redialling) and a
    request waits for the connection up to ``timeout``. After a connection is
    lost, NNG redials by itself either way.
    """

    def __init__(self, url: str, timeout: float | None, *, connect: bool = True) -> None:
        ms = _millis(timeout)
        self.url = url
        try:
            self._socket = pynng.Req0(
                resend_time=_INFINITE,
                recv_max_size=0,
                recv_timeout=ms,
                send_timeout=ms,
            )
        except pynng.NNGException as exc:
            raise TransportError(f"cannot open a REQ socket: {exc}") from exc
        try:
            self._socket.dial(url, block=connect)
        except pynng.NNGException as exc:
            self._socket.close()
            raise TransportError(f"cannot connect to {url}: {exc}") from exc

    @property
    def resend_time(self) -> int:
        """The socket's ``req:resend-time`` in ms; -1 (infinite) means off."""
        return int(self._socket.resend_time)

    def roundtrip(self, payload: bytes, decode: Callable[[Any], _T]) -> _T:
        """Sends ``payload`` and returns ``decode(reply)``.

        ``decode`` gets a buffer over the received NNG message that is valid
        only during the call, so the reply is decoded without copying it out
        of NNG first.
        """
        try:
            ctx = self._socket.new_context()
        except pynng.NNGException as exc:
            raise TransportError(f"{self.url}: {exc}") from exc
        try:
            try:
                ctx.send(payload)
                msg = ctx.recv_msg()
            except pynng.Timeout as exc:
                raise RequestTimeout(f"{self.url}: no reply within the timeout") from exc
            except pynng.NNGException as exc:
                raise TransportError(f"{self.url}: {exc}") from exc
            # Message._buffer is pynng's documented view of the message body
            # (see pynng.Message); .bytes is the copying fallback.
            buffer = getattr(msg, "_buffer", None)
            return decode(buffer if buffer is not None else msg.bytes)
        finally:
            try:
                ctx.close()
            except pynng.NNGException:
                pass  # the socket was closed under us; the context went with it

    def close(self) -> None:
        """Closes the socket; requests in flight fail with TransportError."""
        self._socket.close()
