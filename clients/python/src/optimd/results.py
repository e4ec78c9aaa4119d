"""Typed results of the protocol ops (docs/protocol.md §4), built from reply
maps. Each ``from_reply`` checks the keys it reads and raises
:class:`~optimd.ProtocolError` when one is missing or of the wrong type;
keys it does not know are ignored, so a newer daemon's extra keys are fine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt

from .errors import ProtocolError
from .wire import HparamValue, decode_tensor

__all__ = [
    "Session",
    "GroupInfo",
    "Lookahead",
    "Schedule",
    "ObserveResult",
    "ImportResult",
    "Hello",
    "HparamDecl",
    "SlotDecl",
    "PluginInfo",
    "ParamInfo",
    "SessionInfo",
    "Hparams",
    "SessionSummary",
    "StepResult",
    "StepPartResult",
    "PendingStep",
    "range_from_reply",
    "SharedStepResult",
    "SwitchResult",
    "PluginLoad",
    "Array",
]

#: A tensor received from the daemon: a read-only float32 or float64 array.
Array = npt.NDArray[np.floating[Any]]

_T = TypeVar("_T")


def _get(reply: dict[str, Any], key: str, kind: type[_T] | tuple[type, ...], what: str) -> _T:
    """reply[key], checked to be of ``kind`` (bool is not an int here)."""
    if key not in reply:
        raise ProtocolError(f"{what}: the reply has no '{key}'")
    value = reply[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"{what}: '{key}' is a bool")
    if not isinstance(value, kinds):
        raise ProtocolError(f"{what}: '{key}' is a {type(value).__name__}")
    return cast(_T, value)


def _float(reply: dict[str, Any], key: str, what: str) -> float:
    return float(_get(reply, key, (int, float), what))


def _opt_str(reply: dict[str, Any], key: str, what: str) -> str | None:
    return _get(reply, key, (str, type(None)), what)


def _hparam_map(reply: dict[str, Any], key: str, what: str) -> dict[str, HparamValue]:
    values = _get(reply, key, dict, what)
    for k, v in values.items():
        if not isinstance(k, str) or not isinstance(v, (bool, int, float)):
            raise ProtocolError(f"{what}: '{key}' holds {k!r}: {v!r}")
    return cast("dict[str, HparamValue]", values)


def _tensor_map(reply: dict[str, Any], key: str, what: str) -> dict[str, Array]:
    values = _get(reply, key, dict, what)
    return {str(name): decode_tensor(t, f"{what}: tensor {name!r}") for name, t in values.items()}


def _float_map(reply: dict[str, Any], key: str, what: str) -> dict[str, float]:
    values = _get(reply, key, dict, what)
    for k, v in values.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ProtocolError(f"{what}: '{key}' holds {k!r}: {v!r}")
    return {k: float(v) for k, v in values.items()}


@dataclass(frozen=True)
class Session:
    """A session's identity: its name and the token ``open`` returned. Every
    session op needs both; keep them to reattach later (``Client.attach``).

    Two sessions are equal when name and token are; ``lr`` and ``existing``
    only describe the ``open`` that returned this one: the lr its (next) step
    will use, and whether the daemon answered a retried open with the session
    its first attempt made (``open_key``). They are ``None``/false on a
    session built by hand."""

    name: str
    token: str = field(repr=False)
    lr: float | None = field(default=None, compare=False)
    existing: bool = field(default=False, compare=False)

    @classmethod
    def from_reply(cls, reply: dict[str, Any], what: str = "open") -> Session:
        return cls(
            name=_get(reply, "session", str, what),
            token=_get(reply, "token", str, what),
            lr=_float(reply, "lr", what),
            existing=_get(reply, "existing", bool, what),
        )


@dataclass(frozen=True)
class ImportResult:
    """The ``import`` reply: the new session (with its new token) and the
    step count the snapshot carried."""

    session: Session
    steps: int

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> ImportResult:
        w = "import"
        return cls(
            session=Session(_get(reply, "session", str, w), _get(reply, "token", str, w)),
            steps=_get(reply, "steps", int, w),
        )


@dataclass(frozen=True)
class ObserveResult:
    """The ``observe`` reply: the next lr of the group named in the request
    (the default group's when none was), and every group's next lr."""

    lr: float
    lrs: dict[str, float]

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> ObserveResult:
        return cls(lr=_float(reply, "lr", "observe"), lrs=_float_map(reply, "lrs", "observe"))


@dataclass(frozen=True)
class Hello:
    """The ``hello`` reply."""

    server: str
    version: str
    protocol: int
    abi: tuple[int, int]
    max_message: int

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Hello:
        w = "hello"
        abi = _get(reply, "abi", list, w)
        if len(abi) != 2 or not all(isinstance(x, int) for x in abi):
            raise ProtocolError(f"hello: 'abi' is {abi!r}")
        return cls(
            server=_get(reply, "server", str, w),
            version=_get(reply, "version", str, w),
            protocol=_get(reply, "protocol", int, w),
            abi=(abi[0], abi[1]),
            max_message=_get(reply, "max_message", int, w),
        )


@dataclass(frozen=True)
class HparamDecl:
    """A hyperparameter a plugin declares."""

    key: str
    type: Literal["float", "int", "bool"]
    required: bool
    mutable: bool
    min: float | None
    max: float | None
    min_exclusive: bool
    max_exclusive: bool
    default: HparamValue | None
    doc: str

    @classmethod
    def from_reply(cls, d: Any) -> HparamDecl:
        w = "hyperparameter declaration"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        kind = _get(d, "type", str, w)
        if kind not in ("float", "int", "bool"):
            raise ProtocolError(f"{w}: type {kind!r}")
        bound = (int, float, type(None))
        lo: float | None = _get(d, "min", bound, w)
        hi: float | None = _get(d, "max", bound, w)
        return cls(
            key=_get(d, "key", str, w),
            type=kind,  # type: ignore[arg-type]
            required=_get(d, "required", bool, w),
            mutable=_get(d, "mutable", bool, w),
            min=None if lo is None else float(lo),
            max=None if hi is None else float(hi),
            min_exclusive=_get(d, "min_exclusive", bool, w),
            max_exclusive=_get(d, "max_exclusive", bool, w),
            default=_get(d, "default", (bool, int, float, type(None)), w),
            doc=_get(d, "doc", str, w),
        )


@dataclass(frozen=True)
class SlotDecl:
    """A per-parameter state slot an optimizer declares."""

    key: str
    dtype: str  # "param", "f32" or "f64"
    #: "param", "scalar", "rows" or "cols" (docs/protocol.md, ``plugins``);
    #: kept as given, since a newer daemon may name shapes this client does not know.
    shape: str
    enabled_by: str | None
    doc: str

    @classmethod
    def from_reply(cls, d: Any) -> SlotDecl:
        w = "slot declaration"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        return cls(
            key=_get(d, "key", str, w),
            dtype=_get(d, "dtype", str, w),
            shape=_get(d, "shape", str, w),
            enabled_by=_opt_str(d, "enabled_by", w),
            doc=_get(d, "doc", str, w),
        )


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin, from ``plugins``. ``slots`` and ``dtypes`` are empty
    for schedulers. ``sliced`` (optimizers) says whether its steps may be sent
    in parts (it declares element-wise updates; ``Client.step`` with
    ``part_elements``); ``None`` for a scheduler or a daemon that does not
    say."""

    id: str
    kind: Literal["optimizer", "scheduler"]
    version: str
    description: str
    hparams: tuple[HparamDecl, ...]
    slots: tuple[SlotDecl, ...]
    dtypes: tuple[str, ...]
    sliced: bool | None = None

    def hparam(self, key: str) -> HparamDecl:
        """The declaration of ``key`` (KeyError if the plugin has none)."""
        for decl in self.hparams:
            if decl.key == key:
                return decl
        raise KeyError(key)

    @classmethod
    def from_reply(cls, d: Any) -> PluginInfo:
        w = "plugin"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        kind = _get(d, "kind", str, w)
        if kind not in ("optimizer", "scheduler"):
            raise ProtocolError(f"{w}: kind {kind!r}")
        return cls(
            id=_get(d, "id", str, w),
            kind=kind,  # type: ignore[arg-type]
            version=_get(d, "version", str, w),
            description=_get(d, "description", str, w),
            hparams=tuple(HparamDecl.from_reply(h) for h in _get(d, "hparams", list, w)),
            slots=tuple(SlotDecl.from_reply(s) for s in d.get("slots") or ()),
            dtypes=tuple(str(t) for t in d.get("dtypes") or ()),
            sliced=_get(d, "sliced", bool, w) if "sliced" in d else None,
        )


@dataclass(frozen=True)
class ParamInfo:
    """A registered parameter, from ``info``; ``group`` is its parameter
    group's name."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    steps: int
    group: str = "default"

    @classmethod
    def from_reply(cls, d: Any) -> ParamInfo:
        w = "parameter"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        return cls(
            name=_get(d, "name", str, w),
            dtype=_get(d, "dtype", str, w),
            shape=tuple(_get(d, "shape", list, w)),
            steps=_get(d, "steps", int, w),
            group=_get(d, "group", str, w),
        )


@dataclass(frozen=True)
class Schedule:
    """One scheduler of a combined schedule (``"sequential"``/``"chained"``):
    its plugin id and hyperparameters."""

    scheduler: str
    sched_hparams: dict[str, HparamValue] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, d: Any) -> Schedule:
        w = "schedulers entry"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        return cls(scheduler=_get(d, "scheduler", str, w), sched_hparams=_hparam_map(d, "sched_hparams", w))

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheduler": self.scheduler}
        if self.sched_hparams:
            out["sched_hparams"] = dict(self.sched_hparams)
        return out


@dataclass(frozen=True)
class Lookahead:
    """Lookahead around the optimizer (``open``'s ``lookahead``): every
    ``k`` steps of a parameter, its slow weights move ``alpha`` of the way to
    it and it becomes them. ``None`` leaves the daemon's default."""

    k: int | None = None
    alpha: float | None = None

    @classmethod
    def from_reply(cls, d: Any) -> Lookahead:
        w = "lookahead"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        return cls(k=_get(d, "k", int, w), alpha=_float(d, "alpha", w))

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.k is not None:
            out["k"] = int(self.k)
        if self.alpha is not None:
            out["alpha"] = float(self.alpha)
        return out


@dataclass(frozen=True)
class Workers:
    """How a session's workers push (``open``'s ``workers``): ``mode`` is
    ``"sync"`` (``count`` pushes per round combined by ``reduce``, ``"mean"``
    or ``"sum"``; at ``timeout_ms`` the round fails or, with
    ``on_timeout="proceed"``, steps with the pushes present), ``"async"``
    (every push applies at once) or ``"bounded"`` (async, but a worker more
    than ``max_staleness`` pushes ahead of the slowest waits up to
    ``timeout_ms``). ``None`` leaves the daemon's default."""

    mode: str
    count: int | None = None
    reduce: str | None = None
    timeout_ms: int | None = None
    on_timeout: str | None = None
    max_staleness: int | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        for key in ("count", "reduce", "timeout_ms", "on_timeout", "max_staleness"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class WorkerInfo:
    """One member of a session's workers: its rank (the order a sync round
    sums in), pushes applied, staleness (steps since the parameters it last
    received) and whether a push of it is waiting."""

    name: str
    rank: int
    pushes: int
    staleness: int
    waiting: bool

    @classmethod
    def from_reply(cls, d: Any) -> WorkerInfo:
        w = "workers.members"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} entry is not a map")
        return cls(name=_get(d, "name", str, w), rank=_get(d, "rank", int, w), pushes=_get(d, "pushes", int, w),
                   staleness=_get(d, "staleness", int, w), waiting=_get(d, "waiting", bool, w))


@dataclass(frozen=True)
class WorkersInfo:
    """A session's workers as ``info``, ``join`` and ``leave`` report them:
    the settings (:class:`Workers`), the members, and for sync the pushes
    the round in progress has."""

    settings: Workers
    members: tuple[WorkerInfo, ...]
    round_pushes: int = 0

    @classmethod
    def from_reply(cls, d: Any) -> WorkersInfo:
        w = "workers"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        settings = Workers(
            mode=_get(d, "mode", str, w),
            count=_get(d, "count", int, w) if "count" in d else None,
            reduce=_get(d, "reduce", str, w) if "reduce" in d else None,
            timeout_ms=_get(d, "timeout_ms", int, w) if "timeout_ms" in d else None,
            on_timeout=_get(d, "on_timeout", str, w) if "on_timeout" in d else None,
            max_staleness=_get(d, "max_staleness", int, w) if "max_staleness" in d else None)
        return cls(settings=settings,
                   members=tuple(WorkerInfo.from_reply(m) for m in _get(d, "members", list, w)),
                   round_pushes=_get(d, "round_pushes", int, w) if "round_pushes" in d else 0)


@dataclass(frozen=True)
class JoinResult:
    """The ``join`` / ``leave`` reply: the worker's rank (``None`` after a
    leave), the session's step count and its workers."""

    rank: int | None
    steps: int
    workers: WorkersInfo

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> JoinResult:
        w = "join"
        return cls(rank=_get(reply, "rank", int, w) if "rank" in reply else None,
                   steps=_get(reply, "steps", int, w),
                   workers=WorkersInfo.from_reply(reply.get("workers")))


def _schedulers(reply: dict[str, Any], what: str) -> tuple[Schedule, ...]:
    if "schedulers" not in reply:
        return ()
    return tuple(Schedule.from_reply(e) for e in _get(reply, "schedulers", list, what))


def _milestones(reply: dict[str, Any], what: str) -> tuple[int, ...]:
    if "milestones" not in reply:
        return ()
    values = _get(reply, "milestones", list, what)
    if not all(isinstance(m, int) and not isinstance(m, bool) for m in values):
        raise ProtocolError(f"{what}: 'milestones' is {values!r}")
    return tuple(values)


@dataclass(frozen=True)
class GroupInfo:
    """One parameter group of a session (``info``, ``hparams``,
    ``set_hparams``): its scheduler, hyperparameters, base lr, the lr its next
    step will use, and its number of parameters. With a combined schedule,
    ``schedulers`` (and, when sequential, ``milestones``) describe it; they
    are empty otherwise."""

    name: str
    scheduler: str | None
    hparams: dict[str, HparamValue]
    sched_hparams: dict[str, HparamValue]
    base_lr: float
    lr: float
    params: int
    schedulers: tuple[Schedule, ...] = ()
    milestones: tuple[int, ...] = ()

    @classmethod
    def from_reply(cls, d: Any) -> GroupInfo:
        w = "group"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        return cls(
            name=_get(d, "name", str, w),
            scheduler=_opt_str(d, "scheduler", w),
            hparams=_hparam_map(d, "hparams", w),
            sched_hparams=_hparam_map(d, "sched_hparams", w),
            base_lr=_float(d, "base_lr", w),
            lr=_float(d, "lr", w),
            params=_get(d, "params", int, w),
            schedulers=_schedulers(d, w),
            milestones=_milestones(d, w),
        )


@dataclass(frozen=True)
class Hparams:
    """A session's hyperparameters (``hparams`` and ``set_hparams`` replies).

    ``hparams`` holds every optimizer hyperparameter (its ``lr`` is the lr last
    given at ``open`` or ``set_hparams``); ``base_lr`` is the lr given at
    ``open``; ``lr`` is the lr the next step will use. These top-level values
    are the default group's (``schedulers``/``milestones`` too, empty without
    a combined schedule); ``groups`` has every group, ``"default"`` first."""

    hparams: dict[str, HparamValue]
    sched_hparams: dict[str, HparamValue]
    base_lr: float
    lr: float
    groups: tuple[GroupInfo, ...]
    schedulers: tuple[Schedule, ...]
    milestones: tuple[int, ...]

    def group(self, name: str) -> GroupInfo:
        """The group called ``name`` (KeyError if the session has none)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @classmethod
    def from_reply(cls, reply: dict[str, Any], what: str = "hparams") -> Hparams:
        return cls(
            hparams=_hparam_map(reply, "hparams", what),
            sched_hparams=_hparam_map(reply, "sched_hparams", what),
            base_lr=_float(reply, "base_lr", what),
            lr=_float(reply, "lr", what),
            groups=tuple(GroupInfo.from_reply(g) for g in _get(reply, "groups", list, what)),
            schedulers=_schedulers(reply, what),
            milestones=_milestones(reply, what),
        )


@dataclass(frozen=True)
class PendingStep:
    """A sliced step that has not received all its parts (``info``'s
    ``pending_step``): the ``client`` and ``seq`` it was sent under, its
    number of parts and how many of them were applied. Until the last part is
    in, the session refuses other steps and changes with
    :class:`~optimd.StepPendingError`; sending the step again with the same
    ``seq`` completes it."""

    client: str
    seq: int
    count: int
    applied: int

    @classmethod
    def from_reply(cls, d: Any) -> PendingStep:
        w = "pending_step"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w} is not a map")
        return cls(client=_get(d, "client", str, w), seq=_get(d, "seq", int, w),
                   count=_get(d, "count", int, w), applied=_get(d, "applied", int, w))


@dataclass(frozen=True)
class SessionInfo(Hparams):
    """The ``info`` (and ``attach``) reply. ``client_seq`` is the highest
    ``seq`` applied for the ``client`` named in the ``info`` request (``None``
    when none was named); ``lookahead`` is the session's Lookahead settings,
    ``None`` when off."""

    session: str
    optimizer: str
    optimizer_version: str
    scheduler: str | None
    steps: int
    params: tuple[ParamInfo, ...]
    durability: str = "interval"
    client_seq: int | None = None
    lookahead: Lookahead | None = None
    workers: WorkersInfo | None = None
    #: The sliced step the session is in the middle of (docs/protocol.md,
    #: ``step``, "Sliced steps"); ``None`` when there is none.
    pending_step: PendingStep | None = None

    @classmethod
    def from_reply(cls, reply: dict[str, Any], what: str = "info") -> SessionInfo:
        hp = Hparams.from_reply(reply, what)
        return cls(
            hparams=hp.hparams,
            sched_hparams=hp.sched_hparams,
            base_lr=hp.base_lr,
            lr=hp.lr,
            groups=hp.groups,
            schedulers=hp.schedulers,
            milestones=hp.milestones,
            session=_get(reply, "session", str, what),
            optimizer=_get(reply, "optimizer", str, what),
            optimizer_version=_get(reply, "optimizer_version", str, what),
            scheduler=_opt_str(reply, "scheduler", what),
            steps=_get(reply, "steps", int, what),
            params=tuple(ParamInfo.from_reply(p) for p in _get(reply, "params", list, what)),
            durability=_get(reply, "durability", str, what),
            client_seq=_get(reply, "client_seq", int, what) if "client_seq" in reply else None,
            lookahead=None if reply.get("lookahead") is None else Lookahead.from_reply(reply["lookahead"]),
            workers=None if reply.get("workers") is None else WorkersInfo.from_reply(reply["workers"]),
            pending_step=(None if reply.get("pending_step") is None
                          else PendingStep.from_reply(reply["pending_step"])),
        )


@dataclass(frozen=True)
class SessionSummary:
    """One entry of ``sessions``; ``params`` is the number of parameters."""

    session: str
    optimizer: str
    scheduler: str | None
    params: int
    steps: int

    @classmethod
    def from_reply(cls, d: Any) -> SessionSummary:
        w = "sessions"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w}: an entry is not a map")
        return cls(
            session=_get(d, "session", str, w),
            optimizer=_get(d, "optimizer", str, w),
            scheduler=_opt_str(d, "scheduler", w),
            params=_get(d, "params", int, w),
            steps=_get(d, "steps", int, w),
        )


@dataclass(frozen=True)
class StepResult:
    """The ``step`` reply: the session's step count after the step, the lr the
    step used, the lr the next one will use, and the updated parameters
    (read-only arrays; empty when the step was sent with ``return_params=False``).
    ``duplicate`` is true when a sequenced step had already been applied: the
    counters are then those recorded at its first application.

    ``lr``/``next_lr`` are the default group's; with more than one group (and
    not on a duplicate) ``lrs``/``next_lrs`` map every group to its lr, and
    are empty otherwise. With ``clip_norm``, ``grad_norm`` is the total norm
    before clipping, or ``grad_norms`` the norm of each group that had
    gradients (``per_group``); ``None``/empty otherwise."""

    steps: int
    lr: float
    next_lr: float
    params: dict[str, Array]
    duplicate: bool = False
    lrs: dict[str, float] = field(default_factory=dict)
    next_lrs: dict[str, float] = field(default_factory=dict)
    grad_norm: float | None = None
    grad_norms: dict[str, float] = field(default_factory=dict)
    #: A worker's push (sessions with workers): who pushed, its pushes applied
    #: so far, and how many steps older than the session its parameters were
    #: (staleness); sync: how many pushes the round combined; bounded: how
    #: many pushes it led the slowest worker by when admitted, and whether it
    #: had to wait.
    worker: str | None = None
    pushes: int | None = None
    staleness: int | None = None
    combined: int | None = None
    lead: int | None = None
    waited: bool | None = None

    def group_lr(self, group: str) -> float:
        """The lr ``group`` used in this step (the one lr of a one-group session)."""
        return self.lrs[group] if self.lrs else self._only_group(group, self.lr)

    def group_next_lr(self, group: str) -> float:
        """The lr ``group``'s next step will use."""
        return self.next_lrs[group] if self.next_lrs else self._only_group(group, self.next_lr)

    @staticmethod
    def _only_group(group: str, lr: float) -> float:
        if group != "default":
            raise KeyError(group)
        return lr

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> StepResult:
        w = "step"
        return cls(
            steps=_get(reply, "steps", int, w),
            lr=_float(reply, "lr", w),
            next_lr=_float(reply, "next_lr", w),
            params=_tensor_map(reply, "params", w) if "params" in reply else {},
            duplicate=_get(reply, "duplicate", bool, w) if "duplicate" in reply else False,
            lrs=_float_map(reply, "lrs", w) if "lrs" in reply else {},
            next_lrs=_float_map(reply, "next_lrs", w) if "next_lrs" in reply else {},
            grad_norm=_float(reply, "grad_norm", w) if "grad_norm" in reply else None,
            grad_norms=_float_map(reply, "grad_norms", w) if "grad_norms" in reply else {},
            worker=_get(reply, "worker", str, w) if "worker" in reply else None,
            pushes=_get(reply, "pushes", int, w) if "pushes" in reply else None,
            staleness=_get(reply, "staleness", int, w) if "staleness" in reply else None,
            combined=_get(reply, "combined", int, w) if "combined" in reply else None,
            lead=_get(reply, "lead", int, w) if "lead" in reply else None,
            waited=_get(reply, "waited", bool, w) if "waited" in reply else None,
        )


@dataclass(frozen=True)
class SharedStepResult(StepResult):
    """The ``shm_step`` reply: a :class:`StepResult` whose ``params`` is always
    empty (the daemon wrote them into the segment). ``detached`` is true when
    the segment shrank while the daemon wrote them: the step was applied, the
    segment is detached, and the values are to be had with ``pull``."""

    detached: bool = False

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> SharedStepResult:
        w = "shm_step"
        base = StepResult.from_reply(reply)
        return cls(
            steps=base.steps, lr=base.lr, next_lr=base.next_lr, params={}, duplicate=base.duplicate,
            lrs=base.lrs, next_lrs=base.next_lrs, grad_norm=base.grad_norm, grad_norms=base.grad_norms,
            detached=_get(reply, "detached", bool, w),
        )


def range_from_reply(value: Any, what: str) -> tuple[int, Array]:
    """A parameter in the reply to a part of a sliced step: ``{offset,
    values}`` as (offset, read-only 1-D array); a whole tensor map (offset
    0) is accepted too."""
    if isinstance(value, dict) and "offset" in value:
        offset = _get(value, "offset", int, what)
        values = decode_tensor(value.get("values"), f"{what}: values")
        if offset < 0 or values.ndim != 1:
            raise ProtocolError(f"{what}: a range at offset {offset} with {values.ndim} dimensions")
        return offset, values
    return 0, decode_tensor(value, what).reshape(-1)


@dataclass(frozen=True)
class StepPartResult:
    """The reply to one part of a sliced step (``Client.step_part``).

    ``complete`` is true when this part completed the step (or the step was
    complete before it); ``parts`` is the number of the step's parts applied
    so far. Until the step is complete, ``steps`` does not count it and
    ``next_lr`` equals ``lr``. ``params`` maps each parameter the part named
    to ``(offset, values)``: the new values (a read-only 1-D array) of the
    elements it carried, from element ``offset`` on in C order; empty with
    ``return_params=False``. ``duplicate`` is true for a part that had been
    applied before (its values are then the current ones)."""

    steps: int
    lr: float
    next_lr: float
    complete: bool
    parts: int
    params: dict[str, tuple[int, Array]]
    duplicate: bool = False
    lrs: dict[str, float] = field(default_factory=dict)
    next_lrs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> StepPartResult:
        w = "step part"
        params: dict[str, tuple[int, Array]] = {}
        if "params" in reply:
            for name, value in _get(reply, "params", dict, w).items():
                params[str(name)] = range_from_reply(value, f"{w}: parameter {name!r}")
        return cls(
            steps=_get(reply, "steps", int, w),
            lr=_float(reply, "lr", w),
            next_lr=_float(reply, "next_lr", w),
            complete=_get(reply, "complete", bool, w),
            parts=_get(reply, "parts", int, w),
            params=params,
            duplicate=_get(reply, "duplicate", bool, w) if "duplicate" in reply else False,
            lrs=_float_map(reply, "lrs", w) if "lrs" in reply else {},
            next_lrs=_float_map(reply, "next_lrs", w) if "next_lrs" in reply else {},
        )


@dataclass(frozen=True)
class SwitchResult:
    """The ``switch`` reply: the optimizer the session now runs, its version,
    and the state slot keys carried over from the previous optimizer (the
    others start zero-filled)."""

    optimizer: str
    optimizer_version: str
    carried: tuple[str, ...]

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> SwitchResult:
        w = "switch"
        carried = _get(reply, "carried", list, w)
        if not all(isinstance(k, str) for k in carried):
            raise ProtocolError(f"{w}: 'carried' is {carried!r}")
        return cls(
            optimizer=_get(reply, "optimizer", str, w),
            optimizer_version=_get(reply, "optimizer_version", str, w),
            carried=tuple(carried),
        )


@dataclass(frozen=True)
class PluginLoad:
    """One plugin file a ``reload`` or ``load`` tried: when ``loaded``, the
    plugin ``id`` and ``version`` it now serves as current; otherwise the
    ``error`` that refused it (the running version stays)."""

    path: str
    loaded: bool
    id: str | None = None
    version: str | None = None
    error: str | None = None

    @classmethod
    def from_reply(cls, d: Any) -> PluginLoad:
        w = "plugin load"
        if not isinstance(d, dict):
            raise ProtocolError(f"{w}: an entry is not a map")
        loaded = _get(d, "loaded", bool, w)
        if loaded:
            return cls(path=_get(d, "path", str, w), loaded=True,
                       id=_get(d, "id", str, w), version=_get(d, "version", str, w))
        return cls(path=_get(d, "path", str, w), loaded=False, error=_get(d, "error", str, w))


def tensors_from_reply(reply: dict[str, Any], what: str) -> dict[str, Array]:
    """The ``params`` map of a ``pull`` reply as arrays."""
    return _tensor_map(reply, "params", what)


def state_from_reply(reply: dict[str, Any]) -> dict[str, dict[str, Array]]:
    """The ``state`` reply: parameter name -> slot key -> array."""
    w = "state"
    state = _get(reply, "state", dict, w)
    out: dict[str, dict[str, Array]] = {}
    for name, slots in state.items():
        if not isinstance(name, str) or not isinstance(slots, dict):
            raise ProtocolError(f"{w}: parameter {name!r} has no slot map")
        out[name] = _tensor_map(state, name, f"{w} of {name!r}")
    return out


def snapshot_from_reply(reply: dict[str, Any]) -> bytes:
    """The ``export`` reply's safetensors bytes."""
    return _get(reply, "snapshot", bytes, "export")

