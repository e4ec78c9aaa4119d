"""``optimd.Client``: every op of protocol 1 (docs/protocol.md §4)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import numpy.typing as npt

from . import messages
from .messages import ClipNormSpec, GroupSpec, LookaheadSpec, Request, ScheduleSpec
from .results import (
    JoinResult,
    Workers,
    Array,
    Hello,
    Hparams,
    ImportResult,
    ObserveResult,
    PluginInfo,
    PluginLoad,
    Session,
    SessionInfo,
    SessionSummary,
    SharedStepResult,
    StepResult,
    SwitchResult,
)
from .shared_memory import SharedMemory
from .transport import Transport
from .wire import HparamValue, decode_reply, encode_request

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

    TLS, for a ``tls+tcp://`` URL: ``tls_ca_file`` (required there) is the
    PEM file of the CA that issued the daemon's certificate;
    ``tls_cert_file`` and ``tls_key_file`` (both or neither) are this
    client's certificate and key, for a daemon that requires client
    certificates (``--tls-ca``); ``tls_server_name`` is the name the
    daemon's certificate must carry (default: the URL's host; certificates
    are matched by DNS name, so for ``tls+tcp://127.0.0.1:PORT`` give e.g.
    ``"localhost"``). TLS options with another scheme, or unreadable files,
    raise ValueError. A daemon that refuses this client's certificate, or
    whose certificate this client does not trust, makes the constructor
    raise :class:`~optimd.TransportError` (with ``connect=False``: each
    request, after ``timeout``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float | None = 30.0,
        *,
        connect: bool = True,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._transport = Transport(
            url, timeout, connect=connect, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file, tls_server_name=tls_server_name)
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

        The typed methods below are built on :mod:`optimd.messages`; use this
        for ops this client does not know yet. Array values in ``fields`` must
        already be tensor maps (:func:`optimd.wire.encode_tensor`).
        """
        request_id = self._next_id()
        payload = encode_request(op, request_id, fields)
        return self._transport.roundtrip(payload, lambda buf: decode_reply(buf, request_id))

    def send(self, request: Request) -> Any:
        """Sends a request built by :mod:`optimd.messages` and returns its
        typed result (what the method of the same op returns)."""
        request_id = self._next_id()
        payload = request.encode_parts(request_id)
        return self._transport.roundtrip(
            payload, lambda buf: messages.parse_reply(request.op, buf, request_id))

    # -- daemon ops -------------------------------------------------------

    def hello(self, client: str | None = None) -> Hello:
        """The daemon's name, version, protocol, plugin ABI and size limit.
        ``client`` is free text for the daemon's log."""
        result: Hello = self.send(messages.hello(client))
        return result

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin, sorted by id, with its declarations."""
        result: list[PluginInfo] = self.send(messages.plugins())
        return result

    def sessions(self) -> list[SessionSummary]:
        """Every session, sorted by name (tokens are never listed)."""
        result: list[SessionSummary] = self.send(messages.sessions())
        return result

    # -- session lifecycle ------------------------------------------------

    def open(
        self,
        session: str,
        optimizer: str,
        hparams: Mapping[str, HparamValue] | None = None,
        *,
        scheduler: str | None = None,
        sched_hparams: Mapping[str, HparamValue] | None = None,
        groups: Sequence[GroupSpec] | None = None,
        durability: str | None = None,
        open_key: str | None = None,
        lookahead: LookaheadSpec | None = None,
        schedulers: Sequence[ScheduleSpec] | None = None,
        milestones: Sequence[int] | None = None,
        workers: Workers | Mapping[str, Any] | None = None,
    ) -> Session:
        """Creates a session named ``session`` running plugin ``optimizer``,
        optionally with a server-side ``scheduler``. Hyperparameters not given
        take the plugin's defaults. ``durability`` is ``"always"``,
        ``"interval"`` (the daemon's default) or ``"none"`` (docs/protocol.md).

        ``groups`` are parameter groups besides ``"default"`` (which
        ``hparams``/``scheduler``/``sched_hparams`` configure), each a
        :class:`~optimd.Group` (or the protocol's map): a name, the
        hyperparameters that differ from the default group's, and its own
        scheduler if it should not share the default group's.

        Returns the session (name and token), with ``lr``, the lr its first
        step will use. ``open_key`` (16 to 64 printable ASCII characters, e.g.
        ``secrets.token_hex(16)``) makes a retry safe: an open repeated with
        the same key after a lost reply returns the session the first attempt
        created (``existing=True``) instead of failing with SESSION_EXISTS.

        ``scheduler="sequential"`` (torch's ``SequentialLR``, with
        ``milestones``) or ``"chained"`` (``ChainedScheduler``) combine the
        :class:`~optimd.Schedule` parts in ``schedulers``; ``lookahead``
        (:class:`~optimd.Lookahead`) wraps the optimizer in Lookahead;
        ``workers`` (:class:`~optimd.Workers`) makes it a session that
        several workers push to (sync, async or bounded; see :meth:`join`)."""
        result: Session = self.send(messages.open(
            session, optimizer, hparams, scheduler=scheduler, sched_hparams=sched_hparams,
            groups=groups, durability=durability, open_key=open_key, lookahead=lookahead,
            schedulers=schedulers, milestones=milestones, workers=workers))
        return result

    def attach(self, session: Session) -> SessionInfo:
        """Checks ``session``'s token (use it when reconnecting) and returns
        what ``info`` returns."""
        result: SessionInfo = self.send(messages.attach(session))
        return result

    def info(self, session: Session, client: str | None = None) -> SessionInfo:
        """The session's plugin, groups, hyperparameters, lr, step count and
        parameters. With ``client``, ``client_seq`` is the highest ``seq`` the
        session applied for that client id (0 if none)."""
        result: SessionInfo = self.send(messages.info(session, client))
        return result

    def hparams(self, session: Session) -> Hparams:
        """The session's hyperparameters, base lr and next-step lr, by group."""
        result: Hparams = self.send(messages.hparams(session))
        return result

    def set_hparams(
        self, session: Session, hparams: Mapping[str, HparamValue], group: str | None = None
    ) -> Hparams:
        """Changes mutable hyperparameters of ``group`` (default: of every
        group, each keeping the keys not given), all or none, before the next
        step. Setting ``lr`` makes it the next step's lr (a scheduler goes on
        from it)."""
        result: Hparams = self.send(messages.set_hparams(session, hparams, group))
        return result

    def close_session(self, session: Session) -> None:
        """Deletes the session and all its state on the daemon (op ``close``)."""
        self.send(messages.close(session))

    def export(self, session: Session, names: Iterable[str] | None = None) -> bytes:
        """The session as one safetensors snapshot (parameters, optimizer
        state, hyperparameters, counters, token): what :meth:`import_session`
        and :meth:`import_into` take, on this daemon or another. With
        ``names``, only those parameters (and their state) are in it; the
        rest of the session is, whole. An unknown name raises
        :class:`~optimd.UnknownParamError`."""
        result: bytes = self.send(messages.export(session, names))
        return result

    def import_into(self, session: Session, snapshot: bytes) -> int:
        """Adds the parameters of an :meth:`export` snapshot, with their
        state, to the existing ``session`` (op ``import`` with ``into``);
        returns how many. The snapshot must come from the same run at the
        same step (same optimizer, step count, groups and their settings;
        :class:`~optimd.BadRequestError` says which differs) and hold no
        parameter the session has (:class:`~optimd.ParamExistsError`). All or
        nothing, and on the daemon's disk when this returns."""
        result: int = self.send(messages.import_into(session, snapshot))
        return result

    def unregister(self, session: Session, names: Iterable[str]) -> int:
        """Removes the named parameters and their state from ``session``, all
        or none (an unknown name raises :class:`~optimd.UnknownParamError`);
        returns how many. On the daemon's disk when this returns."""
        result: int = self.send(messages.unregister(session, names))
        return result

    def import_session(
        self, snapshot: bytes, session: str | None = None, *, durability: str | None = None
    ) -> ImportResult:
        """Creates a session from an :meth:`export` snapshot, named
        ``session`` (default: the name in the snapshot), with a new token."""
        result: ImportResult = self.send(messages.import_(snapshot, session, durability))
        return result

    # -- tensors ----------------------------------------------------------

    def register(
        self, session: Session, params: Mapping[str, npt.ArrayLike], group: str | None = None
    ) -> int:
        """Registers parameters with their initial values (float32 or float64
        arrays; the optimizer must list the dtype) in ``group`` (default:
        ``"default"``). Returns the count."""
        result: int = self.send(messages.register(session, params, group))
        return result

    def step(
        self,
        session: Session,
        grads: Mapping[str, npt.ArrayLike],
        *,
        return_params: bool = True,
        seq: int | None = None,
        client: str | None = None,
        clip_value: float | None = None,
        clip_norm: ClipNormSpec | None = None,
        worker: str | None = None,
    ) -> StepResult:
        """Applies one optimizer step with ``grads`` (a subset of the
        registered parameters; each with its parameter's dtype and shape).

        Returns the step count, the lr used, the next lr (by group too, with
        several groups) and, unless ``return_params`` is false, the updated
        parameters as read-only arrays. Unsequenced steps are not idempotent:
        a step that raised TransportError may or may not have been applied.
        Give ``seq`` (and a ``client`` id) to make a retry safe: the daemon
        applies each client's sequence number at most once and answers a
        retry with ``duplicate=True``.

        Clipping happens on the daemon, before the update, as torch's
        utilities would between ``backward()`` and ``step()``: ``clip_value``
        clamps every element to ``[-clip_value, clip_value]``; ``clip_norm``
        (a :class:`~optimd.ClipNorm`, or just ``max_norm``) rescales as
        ``clip_grad_norm_`` and the result carries ``grad_norm`` (or
        ``grad_norms`` by group with ``per_group``).

        In a session with workers every step is a push by ``worker`` (joined
        with :meth:`join`). In a ``sync`` session the call returns when the
        round is complete, with the parameters every worker of the round gets;
        a ``bounded`` worker too far ahead returns once the slowest caught up.
        Either may wait up to the session's ``timeout_ms``: give the client a
        ``timeout`` longer than that.
        """
        result: StepResult = self.send(messages.step(
            session, grads, return_params=return_params, seq=seq, client=client,
            clip_value=clip_value, clip_norm=clip_norm, worker=worker))
        return result

    def join(self, session: Session, worker: str) -> JoinResult:
        """Makes ``worker`` a member of a session opened with ``workers`` (its
        rank is the lowest free one; joining again changes nothing)."""
        result: JoinResult = self.send(messages.join(session, worker))
        return result

    def leave(self, session: Session, worker: str) -> JoinResult:
        """Removes ``worker`` from the session; a push of it that waits is
        answered with :class:`~optimd.UnknownWorkerError`."""
        result: JoinResult = self.send(messages.leave(session, worker))
        return result

    # -- shared memory (a client on the daemon's host, over ipc://) -------

    def shared_memory(self, session: Session, names: Iterable[str] | None = None) -> SharedMemory:
        """Puts the named parameters (default: all) and their gradients in a
        new shared-memory segment the daemon maps, so that
        :meth:`SharedMemory.step` moves no tensor bytes through the socket.
        This client must be connected over ``ipc://``; see
        :class:`~optimd.SharedMemory`."""
        return SharedMemory(self, session, names)

    def shm_attach(
        self, session: Session, segment: str, size: int, layout: Mapping[str, tuple[int, int]]
    ) -> int:
        """The raw ``shm_attach``: maps segment ``segment`` (a POSIX shm name
        of a file of ``size`` bytes this process owns, mode 0600) with each
        parameter's (param, grad) byte offsets; returns how many it laid
        out. :meth:`shared_memory` does all of this for you."""
        result: int = self.send(messages.shm_attach(session, segment, size, layout))
        return result

    def shm_step(
        self,
        session: Session,
        names: Iterable[str] | None = None,
        *,
        seq: int | None = None,
        client: str | None = None,
        clip_value: float | None = None,
        clip_norm: ClipNormSpec | None = None,
    ) -> SharedStepResult:
        """The raw ``shm_step``: a step with the gradients in the attached
        segment, the new parameters written back there."""
        result: SharedStepResult = self.send(messages.shm_step(
            session, names, seq=seq, client=client, clip_value=clip_value, clip_norm=clip_norm))
        return result

    def shm_detach(self, session: Session) -> bool:
        """Unmaps the session's segment on the daemon; False if none was."""
        result: bool = self.send(messages.shm_detach(session))
        return result

    def observe(self, session: Session, metric: float, group: str | None = None) -> ObserveResult:
        """Reports a metric (e.g. a validation loss) to the schedulers that
        take one (``plateau``), of ``group`` or of every group; returns the
        next lr of that group (default group's) and of every group."""
        result: ObserveResult = self.send(messages.observe(session, metric, group))
        return result

    def switch(
        self, session: Session, optimizer: str, hparams: Mapping[str, HparamValue] | None = None
    ) -> SwitchResult:
        """Moves the session to plugin ``optimizer`` between two steps. It
        keeps the hyperparameters the new optimizer shares (``hparams``
        overrides them), carries the state slots of the same key and layout
        (listed in ``carried``) and starts the others zero-filled; steps,
        parameters, groups and schedules go on. All or nothing."""
        result: SwitchResult = self.send(messages.switch(session, optimizer, hparams))
        return result

    # -- admin ops (the daemon's --admin-token) ---------------------------

    def reload(self, admin_token: str) -> list[PluginLoad]:
        """Rescans the daemon's plugin directories and hot-swaps every new or
        changed plugin file; one entry per file it tried. A wrong token raises
        :class:`~optimd.BadTokenError`."""
        result: list[PluginLoad] = self.send(messages.reload(admin_token))
        return result

    def load(self, path: str, admin_token: str) -> list[PluginLoad]:
        """Loads the plugin file at ``path`` (on the daemon's machine) as
        :meth:`reload` loads a changed one. A refused file raises
        :class:`~optimd.PluginError`."""
        result: list[PluginLoad] = self.send(messages.load(path, admin_token))
        return result

    def drop(self, session_name: str, admin_token: str) -> None:
        """Closes session ``session_name`` as :meth:`close_session` does,
        without its token (one whose token was lost). An unknown name raises
        :class:`~optimd.UnknownSessionError`."""
        self.send(messages.drop(session_name, admin_token))

    def shutdown(self, admin_token: str) -> None:
        """Stops the daemon as SIGTERM does: it answers, finishes the
        requests being applied, snapshots changed sessions and exits 0."""
        self.send(messages.shutdown(admin_token))

    def pull(self, session: Session, names: Iterable[str] | None = None,
             worker: str | None = None) -> dict[str, Array]:
        """Current values of the named parameters (default: all), as
        read-only arrays. With ``worker``: that worker's pull, after which
        its staleness counts from now."""
        result: dict[str, Array] = self.send(messages.pull(session, names, worker))
        return result

    def state(self, session: Session, names: Iterable[str] | None = None) -> dict[str, dict[str, Array]]:
        """The optimizer state the daemon holds for the named parameters
        (default: all): name -> slot key (as ``plugins`` lists them) -> read-only
        array. A parameter that never stepped has an empty map."""
        result: dict[str, dict[str, Array]] = self.send(messages.state(session, names))
        return result
