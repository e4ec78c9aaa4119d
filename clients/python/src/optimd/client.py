"""``optimd.Client``: every op of protocol 1 (docs/protocol.md §4)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Final

import numpy.typing as npt

from .errors import ProtocolError
from .results import (
    Array,
    Hello,
    Hparams,
    PluginInfo,
    Session,
    SessionInfo,
    SessionSummary,
    StepResult,
    tensors_from_reply,
)
from .transport import Transport
from .wire import HparamValue, decode_reply, encode_request, encode_tensor

__all__ = ["Client", "DEFAULT_URL"]

#: Where the daemon listens unless told otherwise.
DEFAULT_URL: Final = "tcp://127.0.0.1:7878"

_MAX_ID = 2**32 - 1


class Client:
    """A connection to one optimd daemon.

    ``timeout`` (seconds, ``None`` for none) bounds sending each request and
    waiting for its reply. The constructor connects at once and raises
    :class:`~optimd.TransportError` if nothing listens at ``url``; pass
    ``connect=False`` to dial in the background instead (requests then wait for
    the daemon up to ``timeout``).

    A client is thread-safe: each request uses its own NNG context, so threads
    may share one client and have requests in flight at the same time.
    Requests are never resent; see :class:`~optimd.TransportError`.

    Errors: a daemon error reply raises the :class:`~optimd.OptimdError`
    subclass of its code; a failed exchange raises
    :class:`~optimd.TransportError`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float | None = 30.0,
        *,
        connect: bool = True,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._transport = Transport(url, timeout, connect=connect)
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Closes the connection (sessions stay on the daemon)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, timeout={self.timeout!r})"

    # -- the raw exchange -------------------------------------------------

    def _next_id(self) -> int:
        with self._ids_lock:
            return (next(self._ids) - 1) % _MAX_ID + 1

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Sends one request and returns the whole success reply as a map.

        The typed methods below are built on this; use it directly for ops
        this client does not know yet. Array values in ``fields`` must already
        be tensor maps (:func:`optimd.wire.encode_tensor`).
        """
        request_id = self._next_id()
        payload = encode_request(op, request_id, fields)
        return self._transport.roundtrip(payload, lambda buf: decode_reply(buf, request_id))

    def _session_request(self, op: str, session: Session, **fields: Any) -> dict[str, Any]:
        return self.request(op, session=session.name, token=session.token, **fields)

    # -- daemon ops -------------------------------------------------------

    def hello(self, client: str | None = None) -> Hello:
        """The daemon's name, version, protocol, plugin ABI and size limit.
        ``client`` is free text for the daemon's log."""
        fields = {} if client is None else {"client": client}
        return Hello.from_reply(self.request("hello", **fields))

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin, sorted by id, with its declarations."""
        reply = self.request("plugins")
        entries = reply.get("plugins")
        if not isinstance(entries, list):
            raise ProtocolError("plugins: the reply has no 'plugins' array")
        return [PluginInfo.from_reply(p) for p in entries]

    def sessions(self) -> list[SessionSummary]:
        """Every session, sorted by name (tokens are never listed)."""
        reply = self.request("sessions")
        entries = reply.get("sessions")
        if not isinstance(entries, list):
            raise ProtocolError("sessions: the reply has no 'sessions' array")
        return [SessionSummary.from_reply(s) for s in entries]

    # -- session lifecycle ------------------------------------------------

    def open(
        self,
        session: str,
        optimizer: str,
        hparams: Mapping[str, HparamValue] | None = None,
        *,
        scheduler: str | None = None,
        sched_hparams: Mapping[str, HparamValue] | None = None,
        durability: str | None = None,
        open_key: str | None = None,
    ) -> Session:
        """Creates a session named ``session`` running plugin ``optimizer``,
        optionally with a server-side ``scheduler``. Hyperparameters not given
        take the plugin's defaults. ``durability`` is ``"always"``,
        ``"interval"`` (the daemon's default) or ``"none"`` (docs/protocol.md).
        Returns the session's name and token; ``hparams(session).lr`` is the
        lr its first step will use. ``open_key`` (16 to 64 printable ASCII
        characters, e.g. ``secrets.token_hex(16)``) makes a retry safe: an open
        repeated with the same key after a lost reply returns the session the
        first attempt created instead of failing with SESSION_EXISTS."""
        fields: dict[str, Any] = {"session": session, "optimizer": optimizer}
        if open_key is not None:
            fields["open_key"] = open_key
        if durability is not None:
            fields["durability"] = durability
        if hparams:
            fields["hparams"] = dict(hparams)
        if scheduler is not None:
            fields["scheduler"] = scheduler
            if sched_hparams:
                fields["sched_hparams"] = dict(sched_hparams)
        elif sched_hparams:
            raise ValueError("sched_hparams given without a scheduler")
        reply = self.request("open", **fields)
        name, token = reply.get("session"), reply.get("token")
        if not isinstance(name, str) or not isinstance(token, str):
            raise ProtocolError("open: the reply has no 'session' and 'token' strings")
        return Session(name, token)

    def attach(self, session: Session) -> SessionInfo:
        """Checks ``session``'s token (use it when reconnecting) and returns
        what ``info`` returns."""
        return SessionInfo.from_reply(self._session_request("attach", session), "attach")

    def info(self, session: Session) -> SessionInfo:
        """The session's plugin, hyperparameters, lr, step count and parameters."""
        return SessionInfo.from_reply(self._session_request("info", session))

    def hparams(self, session: Session) -> Hparams:
        """The session's hyperparameters, base lr and next-step lr."""
        return Hparams.from_reply(self._session_request("hparams", session))

    def set_hparams(self, session: Session, hparams: Mapping[str, HparamValue]) -> Hparams:
        """Changes mutable hyperparameters, all or none, before the next step.
        Setting ``lr`` makes it the next step's lr (a scheduler goes on from it)."""
        reply = self._session_request("set_hparams", session, hparams=dict(hparams))
        return Hparams.from_reply(reply, "set_hparams")

    def close_session(self, session: Session) -> None:
        """Deletes the session and all its state on the daemon (op ``close``)."""
        self._session_request("close", session)

    # -- tensors ----------------------------------------------------------

    def register(self, session: Session, params: Mapping[str, npt.ArrayLike]) -> int:
        """Registers parameters with their initial values (float32 or float64
        arrays; the optimizer must list the dtype). Returns the count."""
        tensors = {name: encode_tensor(value) for name, value in params.items()}
        reply = self._session_request("register", session, params=tensors)
        count = reply.get("registered")
        if not isinstance(count, int):
            raise ProtocolError("register: the reply has no 'registered' count")
        return count

    def step(
        self,
        session: Session,
        grads: Mapping[str, npt.ArrayLike],
        *,
        return_params: bool = True,
        seq: int | None = None,
        client: str | None = None,
    ) -> StepResult:
        """Applies one optimizer step with ``grads`` (a subset of the
        registered parameters; each with its parameter's dtype and shape).

        Returns the step count, the lr used, the next lr and, unless
        ``return_params`` is false, the updated parameters as read-only
        arrays. Unsequenced steps are not idempotent: a step that raised
        TransportError may or may not have been applied. Give ``seq`` (and a
        ``client`` id) to make a retry safe: the daemon applies each client's
        sequence number at most once and answers a retry with
        ``duplicate=True``.
        """
        tensors = {name: encode_tensor(value) for name, value in grads.items()}
        fields: dict[str, Any] = {"grads": tensors}
        if seq is not None:
            fields["seq"] = seq
            if client is not None:
                fields["client"] = client
        if not return_params:
            fields["return"] = False
        return StepResult.from_reply(self._session_request("step", session, **fields))

    def pull(self, session: Session, names: Iterable[str] | None = None) -> dict[str, Array]:
        """Current values of the named parameters (default: all), as
        read-only arrays."""
        fields = {} if names is None else {"names": list(names)}
        return tensors_from_reply(self._session_request("pull", session, **fields), "pull")
