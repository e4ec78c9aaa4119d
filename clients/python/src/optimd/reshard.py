"""Moving a session spread over servers (:class:`optimd.Cluster`) from one
set of servers to another: each parameter whose rendezvous placement
changes is exported from its old server with its optimizer state
(``export`` with ``names``), added to the session on its new server
(``import`` with ``into``, or a plain ``import`` where the session does not
exist yet) and only then removed from the old one (``unregister``).

The order is what keeps every parameter somewhere: all copies are made
before anything is removed. A failure while copying undoes the copies (the
old servers were not touched); a failure while removing leaves stale
copies on old servers, but by then every parameter is complete on its new
server, so the new layout is used anyway. The copy on a parameter's
placement is always the current one (steps send its gradient only there),
so a stale copy elsewhere is deleted, never moved, by the next reshard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .client import Client
from .errors import OptimdError, TransportError
from .placement import place
from .results import ParamInfo, Session

__all__ = ["ReshardPlan", "plan_reshard", "run_reshard"]

#: What one export/import carries at most (estimated: parameter, state
#: slots, lookahead copy), unless a single parameter is larger. Keep it
#: well below the daemons' --max-message (256 MiB by default).
DEFAULT_BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class ReshardPlan:
    """What moves: ``moves[(old_url, new_url)]`` are the parameters that go
    from one server to the other, in each server's registration order;
    ``stale[url]`` are copies left by an interrupted reshard on a server
    that is not their placement (deleted first; their placement holds the
    current copy); ``created`` are the new servers, where the session is
    made by importing its first share; ``dropped`` the old servers that are
    not in the new list (closed once empty)."""

    old_urls: tuple[str, ...]
    new_urls: tuple[str, ...]
    moves: dict[tuple[str, str], tuple[str, ...]]
    stale: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def created(self) -> tuple[str, ...]:
        return tuple(u for u in self.new_urls if u not in self.old_urls)

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(u for u in self.old_urls if u not in self.new_urls)

    def moved(self) -> int:
        """How many parameters change server."""
        return sum(len(names) for names in self.moves.values())


def plan_reshard(held: Mapping[str, Iterable[str]], new_urls: Sequence[str]) -> ReshardPlan:
    """The plan for a session whose parameters ``held[url]`` are on the
    servers ``held`` lists (the cluster's, in its order). A parameter that
    is not on its placement among them raises ValueError: no copy of it can
    be known to be current."""
    old_urls = tuple(held)
    moves: dict[tuple[str, str], list[str]] = {}
    stale: dict[str, list[str]] = {}
    homes: dict[str, str] = {}
    for url, names in held.items():
        for name in names:
            home = place(name, old_urls)
            if home != url:
                stale.setdefault(url, []).append(name)
                continue
            homes[name] = url
            dst = place(name, new_urls)
            if dst != url:
                moves.setdefault((url, dst), []).append(name)
    lost = sorted({n for names in stale.values() for n in names} - set(homes))
    if lost:
        raise ValueError(
            f"parameters {lost[:5]!r} are not on the server their placement names, only elsewhere: "
            "the cluster's server list is not the one they were placed with")
    return ReshardPlan(old_urls, tuple(new_urls), {k: tuple(v) for k, v in moves.items()},
                       {k: tuple(v) for k, v in stale.items()})


def _batches(names: Sequence[str], info: Mapping[str, ParamInfo], copies: int,
             limit: int) -> list[list[str]]:
    out: list[list[str]] = []
    size = 0
    for name in names:
        p = info[name]
        nbytes = int(np.prod(p.shape, dtype=np.int64)) * (8 if p.dtype == "f64" else 4) * copies
        if not out or (size + nbytes > limit and out[-1]):
            out.append([])
            size = 0
        out[-1].append(name)
        size += nbytes
    return out


def run_reshard(
    plan: ReshardPlan,
    clients: Mapping[str, Client],
    sessions: Mapping[str, Session],
    name: str,
    info: Mapping[str, ParamInfo],
    copies: int,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    annotate: Callable[[BaseException, str], None] | None = None,
) -> tuple[dict[str, Session], dict[str, tuple[Session, tuple[str, ...] | None]], BaseException | None]:
    """Carries out ``plan`` for session ``name`` (``sessions``: its old
    servers' sessions; ``clients``: a client for every old and new URL;
    ``info``: every parameter's declaration; ``copies``: tensors a
    parameter stands for in a snapshot). Returns the session on each new
    server, what could not be removed (URL -> its session and the stale
    names, or None for a whole session), and the first removal error (or
    None). A copying failure raises, after undoing the copies."""
    def fail(exc: BaseException, url: str) -> None:
        if annotate is not None:
            annotate(exc, url)

    # 0. Stale copies first: a parameter about to move to a server that
    # still has an old copy of it would be refused there.
    for url, names in plan.stale.items():
        try:
            clients[url].unregister(sessions[url], names)
        except (OptimdError, TransportError) as exc:
            fail(exc, url)
            raise

    # 1. Copy. Nothing is removed until every parameter is on its new server.
    new_sessions = {u: sessions[u] for u in plan.new_urls if u in sessions}
    created: list[str] = []
    added: list[tuple[str, list[str]]] = []
    url = ""
    try:
        for dst in plan.new_urls:
            incoming = [(src, batch) for (src, d), names in plan.moves.items() if d == dst
                        for batch in _batches(names, info, copies, batch_bytes)]
            if dst not in new_sessions:
                # The session on a new server is made from the first share
                # it takes, or from the session without parameters: either
                # way it starts with the old servers' settings, step count,
                # schedule state and clients' sequence numbers, as an
                # `open` could not give it.
                src, batch = incoming.pop(0) if incoming else (plan.old_urls[0], [])
                url = src
                blob = clients[src].export(sessions[src], batch)
                url = dst
                new_sessions[dst] = clients[dst].import_session(blob, name).session
                created.append(dst)
            for src, batch in incoming:
                url = src
                blob = clients[src].export(sessions[src], batch)
                url = dst
                clients[dst].import_into(new_sessions[dst], blob)
                added.append((dst, batch))
    except (OptimdError, TransportError) as exc:
        fail(exc, url)
        leftover: dict[str, tuple[Session, tuple[str, ...] | None]] = {}
        for dst, batch in added:
            try:
                clients[dst].unregister(new_sessions[dst], batch)
            except (OptimdError, TransportError):
                before = leftover[dst][1] or () if dst in leftover else ()
                leftover[dst] = (new_sessions[dst], tuple(before) + tuple(batch))
        for dst in created:
            try:
                clients[dst].close_session(new_sessions[dst])
            except (OptimdError, TransportError):
                leftover[dst] = (new_sessions[dst], None)
        setattr(exc, "leftover", leftover)
        raise

    # 2. Remove the moved parameters from their old servers, and the
    # session from the servers that leave.
    first: BaseException | None = None
    stale: dict[str, tuple[Session, tuple[str, ...] | None]] = {}
    by_src: dict[str, list[str]] = {}
    for (src, _dst), names in plan.moves.items():
        by_src.setdefault(src, []).extend(names)
    for src, names in by_src.items():
        try:
            clients[src].unregister(sessions[src], names)
        except (OptimdError, TransportError) as exc:
            fail(exc, src)
            first = first or exc
            stale[src] = (sessions[src], tuple(names))
    for url in plan.dropped:
        if url in stale:
            continue
        try:
            # Empty by now; checked anyway, since closing deletes.
            if clients[url].info(sessions[url]).params:
                stale[url] = (sessions[url], None)
            else:
                clients[url].close_session(sessions[url])
        except (OptimdError, TransportError) as exc:
            fail(exc, url)
            first = first or exc
            stale[url] = (sessions[url], None)
    return new_sessions, stale, first
