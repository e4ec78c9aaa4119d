"""Every op of protocol 1 as a request builder and a reply parser, with no
socket: :class:`~optimd.Client` sends what these build and returns what
they parse, so they are also the way to speak the protocol over another
transport, to log or replay messages, or to check a client against
tests/protocol/vectors.json.

>>> req = messages.step(session, {"w": grads}, seq=3, client="w0")
>>> payload = req.encode(request_id=7)            # bytes of one msgpack map
>>> result = messages.parse_reply("step", reply_bytes, 7)   # a StepResult

The builders check what the protocol lets a client check on its own (an
option given without the one it needs, a clip bound that is not positive);
everything else is left to the daemon, whose error names the problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Union

import numpy as np
import numpy.typing as npt

from .errors import ProtocolError
from .results import (
    Hello,
    Lookahead,
    JoinResult,
    Workers,
    Schedule,
    Hparams,
    ImportResult,
    ObserveResult,
    PluginInfo,
    Session,
    SessionInfo,
    SessionSummary,
    SharedStepResult,
    StepResult,
    StepPartResult,
    SwitchResult,
    PluginLoad,
    snapshot_from_reply,
    state_from_reply,
    tensors_from_reply,
)
from .wire import (
    HparamValue,
    contiguous_array,
    decode_reply,
    encode_request,
    encode_request_parts,
    encode_tensor,
)

__all__ = [
    "Request",
    "Group",
    "ClipNorm",
    "INHERIT",
    "parse_reply",
    "PARSERS",
    "hello",
    "plugins",
    "sessions",
    "open",
    "attach",
    "info",
    "hparams",
    "set_hparams",
    "close",
    "register",
    "step",
    "step_part",
    "step_parts",
    "slice_grads",
    "MAX_PARTS",
    "abandon_step",
    "observe",
    "switch",
    "reload",
    "load",
    "drop",
    "shutdown",
    "state",
    "export",
    "import_",
    "import_into",
    "unregister",
    "pull",
    "shm_attach",
    "shm_step",
    "shm_detach",
]


class _Inherit:
    """The type of :data:`INHERIT`."""

    _instance: _Inherit | None = None

    def __new__(cls) -> _Inherit:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INHERIT"


#: A group's ``scheduler`` when it takes the default group's (the key is then
#: absent from the request); ``None`` means no scheduler.
INHERIT: Final = _Inherit()


@dataclass(frozen=True)
class Group:
    """A parameter group besides ``"default"`` for :func:`open` (torch's
    ``param_groups``). ``hparams`` name only what differs from the default
    group's; ``scheduler`` is :data:`INHERIT` (the default group's, with its
    ``sched_hparams`` as the starting point), ``None`` (none) or a plugin id."""

    name: str
    hparams: Mapping[str, HparamValue] = field(default_factory=dict)
    scheduler: str | None | _Inherit = INHERIT
    sched_hparams: Mapping[str, HparamValue] = field(default_factory=dict)
    #: a combined schedule's parts (with ``scheduler`` "sequential" or "chained")
    schedulers: Sequence[ScheduleSpec] = ()
    milestones: Sequence[int] = ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.hparams:
            out["hparams"] = dict(self.hparams)
        if not isinstance(self.scheduler, _Inherit):
            out["scheduler"] = self.scheduler
        if self.sched_hparams:
            if self.scheduler is None:
                raise ValueError(f"group {self.name!r}: sched_hparams given with scheduler None")
            out["sched_hparams"] = dict(self.sched_hparams)
        _combined(out, self.schedulers, self.milestones)
        return out


def _combined(out: dict[str, Any], schedulers: Sequence[ScheduleSpec] | None,
              milestones: Sequence[int] | None) -> None:
    """Adds a combined schedule's keys to a request or group map."""
    if schedulers:
        out["schedulers"] = [s.to_wire() if isinstance(s, Schedule) else dict(s) for s in schedulers]
    if milestones:
        out["milestones"] = [int(m) for m in milestones]


@dataclass(frozen=True)
class ClipNorm:
    """``step``'s ``clip_norm``: torch's ``clip_grad_norm_(grads, max_norm,
    norm_type)`` applied by the daemon, over all the step's gradients or over
    each group's (``per_group``). ``norm_type=None`` leaves the daemon's
    default, 2; ``float("inf")`` is the max norm."""

    max_norm: float
    norm_type: float | None = None
    per_group: bool | None = None

    def to_wire(self) -> dict[str, Any]:
        if not self.max_norm > 0:
            raise ValueError(f"clip_norm: max_norm must be > 0, not {self.max_norm}")
        out: dict[str, Any] = {"max_norm": float(self.max_norm)}
        if self.norm_type is not None:
            if not self.norm_type > 0:
                raise ValueError(f"clip_norm: norm_type must be > 0, not {self.norm_type}")
            out["norm_type"] = float(self.norm_type)
        if self.per_group is not None:
            out["per_group"] = bool(self.per_group)
        return out


ScheduleSpec = Union[Schedule, Mapping[str, Any]]
GroupSpec = Union[Group, Mapping[str, Any]]
LookaheadSpec = Union[Lookahead, Mapping[str, Any]]
ClipNormSpec = Union[ClipNorm, float, Mapping[str, Any]]


@dataclass(frozen=True)
class Request:
    """One request before it has an id: the op and its keys (tensors already
    as tensor maps, viewing the caller's arrays). ``reply_as`` names the
    :data:`PARSERS` entry for its reply when that is not ``op``'s (a part of
    a sliced step is a ``step`` whose reply is parsed as ``"step_part"``)."""

    op: str
    fields: dict[str, Any]
    reply_as: str | None = None

    @property
    def reply_kind(self) -> str:
        """The key of :data:`PARSERS` that parses this request's reply."""
        return self.reply_as if self.reply_as is not None else self.op

    def encode(self, request_id: int) -> bytes:
        """The message bytes: ``{v: 1, id, op}`` plus the fields."""
        return encode_request(self.op, request_id, self.fields)

    def encode_parts(self, request_id: int) -> list[Any]:
        """The same bytes as buffers to write one after another, large
        tensors not copied (:func:`optimd.wire.encode_request_parts`)."""
        return encode_request_parts(self.op, request_id, self.fields)


def _session_fields(session: Session) -> dict[str, Any]:
    return {"session": session.name, "token": session.token}


def _tensors(values: Mapping[str, npt.ArrayLike]) -> dict[str, Any]:
    return {name: encode_tensor(value) for name, value in values.items()}


# -- daemon ops -------------------------------------------------------------


def hello(client: str | None = None) -> Request:
    return Request("hello", {} if client is None else {"client": client})


def plugins() -> Request:
    return Request("plugins", {})


def sessions() -> Request:
    return Request("sessions", {})


def open(  # noqa: A001 - the op's name
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
) -> Request:
    """``workers``: a :class:`~optimd.Workers` (or the protocol's map).
    ``schedulers``/``milestones``: the parts of a combined schedule, with
    ``scheduler="sequential"`` or ``"chained"``; ``lookahead``: a
    :class:`~optimd.Lookahead` (or the protocol's ``{k, alpha}`` map)."""
    fields: dict[str, Any] = {"session": session, "optimizer": optimizer}
    if hparams:
        fields["hparams"] = dict(hparams)
    if lookahead is not None:
        fields["lookahead"] = lookahead.to_wire() if isinstance(lookahead, Lookahead) else dict(lookahead)
    if scheduler is not None:
        fields["scheduler"] = scheduler
        if sched_hparams:
            fields["sched_hparams"] = dict(sched_hparams)
        _combined(fields, schedulers, milestones)
    elif sched_hparams or schedulers or milestones:
        raise ValueError("sched_hparams, schedulers or milestones given without a scheduler")
    if groups:
        fields["groups"] = [g.to_wire() if isinstance(g, Group) else dict(g) for g in groups]
    if workers is not None:
        fields["workers"] = workers.to_wire() if isinstance(workers, Workers) else dict(workers)
    if durability is not None:
        fields["durability"] = durability
    if open_key is not None:
        if not 16 <= len(open_key) <= 64 or not all("\x21" <= ch <= "\x7e" for ch in open_key):
            raise ValueError("open_key must be 16 to 64 printable ASCII characters without spaces")
        fields["open_key"] = open_key
    return Request("open", fields)


def import_(snapshot: bytes, session: str | None = None, durability: str | None = None) -> Request:
    fields: dict[str, Any] = {"snapshot": bytes(snapshot)}
    if session is not None:
        fields["session"] = session
    if durability is not None:
        fields["durability"] = durability
    return Request("import", fields)


# -- session ops ------------------------------------------------------------


def attach(session: Session) -> Request:
    return Request("attach", _session_fields(session))


def info(session: Session, client: str | None = None) -> Request:
    fields = _session_fields(session)
    if client is not None:
        fields["client"] = client
    return Request("info", fields)


def hparams(session: Session) -> Request:
    return Request("hparams", _session_fields(session))


def set_hparams(session: Session, hparams: Mapping[str, HparamValue], group: str | None = None) -> Request:
    fields = {**_session_fields(session), "hparams": dict(hparams)}
    if group is not None:
        fields["group"] = group
    return Request("set_hparams", fields)


def close(session: Session) -> Request:
    return Request("close", _session_fields(session))


def register(session: Session, params: Mapping[str, npt.ArrayLike], group: str | None = None) -> Request:
    fields = {**_session_fields(session), "params": _tensors(params)}
    if group is not None:
        fields["group"] = group
    return Request("register", fields)


def step(
    session: Session,
    grads: Mapping[str, npt.ArrayLike],
    *,
    return_params: bool = True,
    seq: int | None = None,
    client: str | None = None,
    clip_value: float | None = None,
    clip_norm: ClipNormSpec | None = None,
    worker: str | None = None,
) -> Request:
    """``clip_norm`` is a :class:`ClipNorm`, a bare ``max_norm``, or the
    protocol's map."""
    fields = {**_session_fields(session), "grads": _tensors(grads)}
    if worker is not None:
        fields["worker"] = worker
    _step_options(fields, seq, client, clip_value, clip_norm, return_params)
    return Request("step", fields)


#: Most parts one sliced step may have (docs/protocol.md, ``step``).
MAX_PARTS: Final = 65536

#: A gradient in one part of a sliced step: a whole tensor, or a range
#: ``(offset, values)`` of a parameter's elements in C order.
PartGrad = Union[npt.ArrayLike, "tuple[int, npt.ArrayLike]"]


def _part_grads(grads: Mapping[str, PartGrad]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in grads.items():
        if isinstance(value, tuple):
            if len(value) != 2:
                raise TypeError(f"gradient {name!r}: a range is (offset, values), not {len(value)} items")
            offset, values = value
            if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
                raise TypeError(f"gradient {name!r}: a range's offset is an int >= 0, not {offset!r}")
            out[name] = {"offset": int(offset), "values": encode_tensor(values)}
        else:
            out[name] = encode_tensor(value)
    return out


def step_part(
    session: Session,
    grads: Mapping[str, PartGrad],
    *,
    index: int,
    count: int,
    seq: int,
    client: str | None = None,
    return_params: bool = True,
    clip_value: float | None = None,
) -> Request:
    """One part of a sliced step (docs/protocol.md, ``step``, "Sliced
    steps"): part ``index`` of ``count``, of the step ``seq`` (required) of
    ``client``. Each gradient is a whole tensor or a range ``(offset,
    values)``: ``values`` (1-D, the parameter's dtype) is the gradient of
    elements ``offset`` on, in C order. Nothing here checks that the parts
    fit together: the daemon does. The reply parses as a
    :class:`~optimd.StepPartResult`."""
    fields = {**_session_fields(session), "grads": _part_grads(grads),
              "part": {"index": int(index), "count": int(count)}}
    _step_options(fields, seq, client, clip_value, None, return_params)
    return Request("step", fields, reply_as="step_part")


def slice_grads(
    grads: Mapping[str, npt.ArrayLike], part_elements: int
) -> list[dict[str, PartGrad]]:
    """The parts of a sliced step: the gradients, taken in order as if
    concatenated (flattened in C order), cut into consecutive parts of
    ``part_elements`` elements (the last one shorter). A tensor that lies
    within one part is there whole; one that a cut crosses is sent as ranges
    ``(offset, values)``, 1-D views of its memory (nothing is copied unless a
    gradient is not C-contiguous little-endian, which is made so once).
    Tensors with no elements go whole into the part being filled. When the
    gradients have more than ``part_elements`` × :data:`MAX_PARTS` elements
    the parts are made larger, so that there are at most :data:`MAX_PARTS`.
    ``grads`` with no elements at all give one part."""
    if isinstance(part_elements, bool) or not isinstance(part_elements, (int, np.integer)) or part_elements < 1:
        raise ValueError(f"part_elements must be an int >= 1, not {part_elements!r}")
    arrays = {name: contiguous_array(value) for name, value in grads.items()}
    total = sum(a.size for a in arrays.values())
    size = max(int(part_elements), math.ceil(total / MAX_PARTS))
    parts: list[dict[str, PartGrad]] = [{}]
    room = size
    for name, array in arrays.items():
        n = array.size
        if n == 0:
            parts[-1][name] = array
            continue
        flat = array.reshape(-1)
        at = 0
        while at < n:
            if room == 0:
                parts.append({})
                room = size
            take = min(n - at, room)
            parts[-1][name] = array if take == n else (at, flat[at:at + take])
            at += take
            room -= take
    return parts


def step_parts(
    session: Session,
    grads: Mapping[str, npt.ArrayLike],
    *,
    part_elements: int,
    seq: int,
    client: str | None = None,
    return_params: bool = True,
    clip_value: float | None = None,
) -> list[Request]:
    """A whole step as the parts of a sliced step (:func:`slice_grads`),
    each a :func:`step_part` request, in order."""
    parts = slice_grads(grads, part_elements)
    return [step_part(session, part, index=i, count=len(parts), seq=seq, client=client,
                      return_params=return_params, clip_value=clip_value)
            for i, part in enumerate(parts)]


def _step_options(
    fields: dict[str, Any],
    seq: int | None,
    client: str | None,
    clip_value: float | None,
    clip_norm: ClipNormSpec | None,
    return_params: bool | None = None,
) -> None:
    """The keys ``step`` and ``shm_step`` share: sequencing and clipping
    (and ``step``'s ``return``, between them, where it always was)."""
    if seq is not None:
        fields["seq"] = seq
        if client is not None:
            fields["client"] = client
    elif client is not None:
        raise ValueError("client given without seq")
    if return_params is not None:
        fields["return"] = bool(return_params)
    if clip_value is not None:
        if not clip_value > 0:
            raise ValueError(f"clip_value must be > 0, not {clip_value}")
        fields["clip_value"] = float(clip_value)
    if clip_norm is not None:
        if isinstance(clip_norm, ClipNorm):
            fields["clip_norm"] = clip_norm.to_wire()
        elif isinstance(clip_norm, Mapping):
            fields["clip_norm"] = ClipNorm(**clip_norm).to_wire()
        else:
            fields["clip_norm"] = ClipNorm(float(clip_norm)).to_wire()


def shm_attach(
    session: Session, segment: str, size: int, layout: Mapping[str, tuple[int, int]]
) -> Request:
    """``layout`` maps each parameter name to its (param, grad) byte offsets
    in the segment."""
    params = {name: {"param": int(p), "grad": int(g)} for name, (p, g) in layout.items()}
    return Request("shm_attach", {**_session_fields(session), "segment": segment, "size": int(size),
                                  "params": params})


def shm_step(
    session: Session,
    names: Iterable[str] | None = None,
    *,
    seq: int | None = None,
    client: str | None = None,
    clip_value: float | None = None,
    clip_norm: ClipNormSpec | None = None,
) -> Request:
    fields = _session_fields(session)
    if names is not None:
        if isinstance(names, str):
            raise TypeError("shm_step: names is an iterable of names, not one str")
        fields["names"] = list(names)
    _step_options(fields, seq, client, clip_value, clip_norm)
    return Request("shm_step", fields)


def shm_detach(session: Session) -> Request:
    return Request("shm_detach", _session_fields(session))


def observe(session: Session, metric: float, group: str | None = None) -> Request:
    fields = {**_session_fields(session), "metric": float(metric)}
    if group is not None:
        fields["group"] = group
    return Request("observe", fields)


def abandon_step(session: Session, seq: int, client: str | None = None) -> Request:
    fields: dict[str, Any] = {**_session_fields(session), "seq": int(seq)}
    if client is not None:
        fields["client"] = client
    return Request("abandon_step", fields)


def switch(session: Session, optimizer: str, hparams: Mapping[str, HparamValue] | None = None) -> Request:
    fields = {**_session_fields(session), "optimizer": optimizer}
    if hparams:
        fields["hparams"] = dict(hparams)
    return Request("switch", fields)


# -- admin ops --------------------------------------------------------------


def reload(admin_token: str) -> Request:
    return Request("reload", {"admin_token": admin_token})


def load(path: str, admin_token: str) -> Request:
    return Request("load", {"path": path, "admin_token": admin_token})


def drop(session_name: str, admin_token: str) -> Request:
    return Request("drop", {"session": session_name, "admin_token": admin_token})


def shutdown(admin_token: str) -> Request:
    return Request("shutdown", {"admin_token": admin_token})


def _names(session: Session, op: str, names: Iterable[str] | None) -> Request:
    fields = _session_fields(session)
    if names is not None:
        if isinstance(names, str):
            raise TypeError(f"{op}: names is an iterable of names, not one str")
        fields["names"] = list(names)
    return Request(op, fields)


def state(session: Session, names: Iterable[str] | None = None) -> Request:
    return _names(session, "state", names)


def pull(session: Session, names: Iterable[str] | None = None, worker: str | None = None) -> Request:
    request = _names(session, "pull", names)
    if worker is not None:
        request.fields["worker"] = worker
    return request


def join(session: Session, worker: str) -> Request:
    return Request("join", {**_session_fields(session), "worker": worker})


def leave(session: Session, worker: str) -> Request:
    return Request("leave", {**_session_fields(session), "worker": worker})


def export(session: Session, names: Iterable[str] | None = None) -> Request:
    return _names(session, "export", names)


def import_into(session: Session, snapshot: bytes) -> Request:
    fields = _session_fields(session)
    fields.update(snapshot=bytes(snapshot), into=True)
    return Request("import", fields)


def unregister(session: Session, names: Iterable[str]) -> Request:
    if names is None:
        raise TypeError("unregister: names is required (an iterable of names)")
    return _names(session, "unregister", names)


# -- replies ----------------------------------------------------------------


def _list_of(key: str, parse: Callable[[Any], Any]) -> Callable[[dict[str, Any]], list[Any]]:
    def parser(reply: dict[str, Any]) -> list[Any]:
        entries = reply.get(key)
        if not isinstance(entries, list):
            raise ProtocolError(f"the reply has no '{key}' array")
        return [parse(e) for e in entries]

    return parser


def _count(op: str, key: str) -> Callable[[dict[str, Any]], int]:
    def parser(reply: dict[str, Any]) -> int:
        count = reply.get(key)
        if not isinstance(count, int) or isinstance(count, bool):
            raise ProtocolError(f"{op}: the reply has no '{key}' count")
        return count

    return parser


_registered = _count("register", "registered")
_imported = _count("import", "imported")


def _import(reply: dict[str, Any]) -> Any:
    # One op, two replies: into an existing session it counts what it
    # added (and has no token); otherwise it is a new session.
    return _imported(reply) if "imported" in reply else ImportResult.from_reply(reply)


def _count_in(reply: dict[str, Any], op: str, key: str) -> int:
    count = reply.get(key)
    if not isinstance(count, int) or isinstance(count, bool):
        raise ProtocolError(f"{op}: the reply has no '{key}' count")
    return count


def _flag(reply: dict[str, Any], op: str, key: str) -> bool:
    flag = reply.get(key)
    if not isinstance(flag, bool):
        raise ProtocolError(f"{op}: the reply has no '{key}' bool")
    return flag


#: op -> the function that turns its success reply map into the typed result
#: the matching :class:`~optimd.Client` method returns.
PARSERS: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "hello": Hello.from_reply,
    "plugins": _list_of("plugins", PluginInfo.from_reply),
    "sessions": _list_of("sessions", SessionSummary.from_reply),
    "open": Session.from_reply,
    "attach": lambda r: SessionInfo.from_reply(r, "attach"),
    "info": SessionInfo.from_reply,
    "hparams": Hparams.from_reply,
    "set_hparams": lambda r: Hparams.from_reply(r, "set_hparams"),
    "close": lambda r: None,
    "register": _registered,
    "step": StepResult.from_reply,
    # Not an op: a part of a sliced step is a "step" whose reply is this.
    "step_part": StepPartResult.from_reply,
    "abandon_step": StepResult.from_reply,
    "observe": ObserveResult.from_reply,
    "switch": SwitchResult.from_reply,
    "reload": _list_of("plugins", PluginLoad.from_reply),
    "load": _list_of("plugins", PluginLoad.from_reply),
    "drop": lambda r: None,
    "shutdown": lambda r: None,
    "state": state_from_reply,
    "export": snapshot_from_reply,
    "import": _import,
    "unregister": _count("unregister", "unregistered"),
    "pull": lambda r: tensors_from_reply(r, "pull"),
    "join": JoinResult.from_reply,
    "leave": JoinResult.from_reply,
    "shm_attach": lambda r: _count_in(r, "shm_attach", "attached"),
    "shm_step": SharedStepResult.from_reply,
    "shm_detach": lambda r: _flag(r, "shm_detach", "detached"),
}


def parse_reply(op: str, message: Any, request_id: int) -> Any:
    """The typed result of ``message`` (a buffer holding one reply) answering
    a request of ``op`` whose id was ``request_id``. Raises the
    :class:`~optimd.OptimdError` subclass of an error reply and
    :class:`~optimd.ProtocolError` for anything that is not a valid reply;
    an op this client does not know gives the reply map itself. ``op`` may
    also be ``"step_part"`` (a part of a sliced step; see
    :attr:`Request.reply_kind`)."""
    reply = decode_reply(message, request_id)
    parser = PARSERS.get(op)
    return reply if parser is None else parser(reply)
