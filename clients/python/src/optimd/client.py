"""``optimd.Client``: every op of protocol 1 (docs/protocol.md §4)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from . import messages
from .errors import ProtocolError
from .messages import ClipNormSpec, GroupSpec, LookaheadSpec, PartGrad, Request, ScheduleSpec
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
    StepPartResult,
    StepResult,
    SwitchResult,
    range_from_reply,
)
from .shared_memory import SharedMemory
from .transport import Transport
from .wire import HparamValue, check_reply, contiguous_array, decode_reply, encode_request, unpack_views

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
            payload, lambda buf: messages.parse_reply(request.reply_kind, buf, request_id))

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
        part_elements: int | None = None,
        parts_in_flight: int = 2,
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

        **Sliced** (``part_elements``): the step goes as several messages
        (docs/protocol.md, ``step``, "Sliced steps"), so that the daemon
        updates one part while the next is on the wire. The gradients, taken
        in order as if concatenated, are cut into parts of ``part_elements``
        elements (:func:`optimd.messages.slice_grads`: small tensors whole,
        ranges of the ones a cut crosses, nothing copied), and up to
        ``parts_in_flight`` parts are in flight at once on this connection
        (at most the daemon's ``--max-in-flight``, 16 by default). The
        result is that of the same step sent whole, bit for bit: counters and
        lrs from the part that completed the step, ``params`` assembled from
        every part's reply (``duplicate`` when every part was one). A sliced
        step needs ``seq`` (``ValueError`` without it); ``clip_norm`` and
        ``worker`` cannot be combined with it (``ValueError``), nor can a
        session with workers or Lookahead or an optimizer that is not
        element-wise (:class:`~optimd.BadRequestError` from the daemon). A
        part the daemon refuses raises its error once the parts in flight
        have been answered; the parts applied before it stay applied, and the
        session has a *pending* step that refuses other steps and changes
        (:class:`~optimd.StepPendingError`) until it is complete.
        **Retrying** after such an error, or after a
        :class:`~optimd.TransportError`: send the same step again, with the
        same ``seq``, ``client``, gradients and ``part_elements`` (so that it
        is cut into the same parts). The parts the daemon had applied are
        answered as duplicates, with their elements' current values, and the
        others are applied, so the step completes exactly once; when it had
        completed before, every part is a duplicate and so is the result.
        """
        if part_elements is not None:
            if clip_norm is not None:
                raise ValueError("clip_norm cannot be used with a sliced step (part_elements): "
                                 "it needs every gradient at once; clip_value can")
            if worker is not None:
                raise ValueError("a session with workers takes no sliced steps (part_elements)")
            if seq is None:
                raise ValueError("a sliced step (part_elements) needs seq, the step's sequence number "
                                 "in this client's numbering (and a client id): every part carries it, "
                                 "and a retry with the same seq completes a step that was cut short")
            return self._sliced_step(session, grads, part_elements, parts_in_flight,
                                     return_params=return_params, seq=seq, client=client,
                                     clip_value=clip_value)
        result: StepResult = self.send(messages.step(
            session, grads, return_params=return_params, seq=seq, client=client,
            clip_value=clip_value, clip_norm=clip_norm, worker=worker))
        return result

    def step_part(
        self,
        session: Session,
        grads: Mapping[str, PartGrad],
        *,
        index: int,
        count: int,
        seq: int,
        client: str | None = None,
        return_params: bool = True,
        clip_value: float | None = None,
    ) -> StepPartResult:
        """Sends one part of a sliced step (docs/protocol.md, ``step``,
        "Sliced steps"): part ``index`` of ``count`` of step ``seq`` of
        ``client``. A gradient is a whole array or a range ``(offset,
        values)``: ``values`` (1-D, the parameter's dtype) is the gradient of
        the parameter's elements ``offset`` on, in C order. The daemon checks
        that the parts fit together (no element twice; none missing when the
        last one arrives). :meth:`step` with ``part_elements`` cuts and sends
        a whole step; this is the one message, for a caller that cuts its
        own."""
        result: StepPartResult = self.send(messages.step_part(
            session, grads, index=index, count=count, seq=seq, client=client,
            return_params=return_params, clip_value=clip_value))
        return result

    def _sliced_step(
        self,
        session: Session,
        grads: Mapping[str, npt.ArrayLike],
        part_elements: int,
        parts_in_flight: int,
        *,
        return_params: bool,
        seq: int,
        client: str | None,
        clip_value: float | None,
    ) -> StepResult:
        if isinstance(parts_in_flight, bool) or not isinstance(parts_in_flight, int) or parts_in_flight < 1:
            raise ValueError(f"parts_in_flight must be an int >= 1, not {parts_in_flight!r}")
        arrays = {name: contiguous_array(g) for name, g in grads.items()}
        requests = messages.step_parts(session, arrays, part_elements=part_elements, seq=seq,
                                       client=client, return_params=return_params, clip_value=clip_value)
        # The parameters' new values, filled in as the parts' replies come:
        # each reply is unpacked with its tensors left where they lie in the
        # received message (wire.unpack_views) and copied from there, once.
        out = {name: np.empty(a.shape, a.dtype) for name, a in arrays.items()} if return_params else {}
        flat = {name: a.reshape(-1) for name, a in out.items()}
        filled = dict.fromkeys(out, 0)

        def decode(buffer: Any, request_id: int) -> StepPartResult:
            reply = check_reply(unpack_views(buffer), request_id)
            params = reply.pop("params", None)
            if params is not None:
                if not isinstance(params, dict):
                    raise ProtocolError("step part: 'params' is not a map")
                for name, value in params.items():
                    offset, values = range_from_reply(value, f"step part: parameter {name!r}")
                    target = flat.get(name)
                    if (target is None or values.dtype != target.dtype
                            or offset + values.size > target.size):
                        raise ProtocolError(f"step part: {name!r} came back as {values.size} "
                                            f"{values.dtype} elements at offset {offset}")
                    target[offset:offset + values.size] = values
                    filled[name] += values.size
            return StepPartResult.from_reply(reply)

        def exchanges() -> Any:
            for request in requests:
                request_id = self._next_id()
                yield (request.encode_parts(request_id),
                       lambda buffer, rid=request_id: decode(buffer, rid))

        replies = self._transport.pipeline(exchanges(), parts_in_flight)
        done = [r for r in replies if r.complete]
        if not done:
            raise ProtocolError(f"sliced step: no part of {len(replies)} reported the step complete")
        # The part that completed it (a retry of a complete step has only
        # duplicates; then the last).
        final = next((r for r in reversed(done) if not r.duplicate), done[-1])
        for name, count in filled.items():
            if count != flat[name].size:
                raise ProtocolError(f"sliced step: the replies held {count} of the "
                                    f"{flat[name].size} elements of {name!r}")
        for array in out.values():
            array.flags.writeable = False
        return StepResult(steps=final.steps, lr=final.lr, next_lr=final.next_lr, params=out,
                          duplicate=all(r.duplicate for r in replies),
                          lrs=final.lrs, next_lrs=final.next_lrs)

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

    def abandon_step(self, session: Session, seq: int, client: str | None = None) -> StepResult:
        """Ends the session's pending sliced step (``info(...).pending_step``,
        sent as ``seq`` by ``client``) as it stands, for a client that cannot
        send its remaining parts: the elements its parts updated stay
        updated, the others are not, and it counts as a step (its other parts
        are duplicates from now on). Returns the step count and lrs after it.
        A way to unblock a session, not to step: see docs/protocol.md."""
        result: StepResult = self.send(messages.abandon_step(session, seq, client))
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
