"""``optimd.Cluster``: one session spread over several daemons.

Each parameter lives on exactly one server, chosen by rendezvous
(highest-random-weight) hashing of its name over the servers' URLs: the
server whose weight ``blake2b(f"{url}\\0{name}", digest_size=8)`` (read as a
big-endian unsigned integer) is highest; a tie, which needs two equal 64-bit
digests, goes to the greater URL. The choice depends only on the name and on
the set of URLs, not on their order nor on any other parameter, so every
worker that lists the same servers (spelled the same way) places a
parameter on the same one, and adding a server moves exactly the parameters
whose weight on the new server beats their old maximum: about 1/(N+1) of
them, all to the new server.

Per-parameter optimizers (SGD, Adam, AdamW, ...) are independent of the
other parameters, so a session spread this way trains bit-identically to
the same session on one server. What a server cannot see is the other
servers' gradients; see :class:`Cluster` for what follows from that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy.typing as npt

from .client import Client
from .errors import OptimdError, TransportError
from .messages import ClipNormSpec, GroupSpec, LookaheadSpec, ScheduleSpec
from .placement import place, rendezvous_weight
from .reshard import DEFAULT_BATCH_BYTES, ReshardPlan, plan_reshard, run_reshard
from .results import Array, Hparams, JoinResult, Session, SessionInfo, StepResult, Workers
from .wire import HparamValue

__all__ = ["Cluster", "ClusterSession", "ClusterStepResult", "place", "rendezvous_weight"]


@dataclass(frozen=True)
class ClusterSession:
    """A session opened on every server of a :class:`Cluster`: its name and
    each server's :class:`~optimd.Session` (with that server's token, left
    out of the ``repr``), by URL. Keep it to reattach with
    :meth:`Cluster.attach`."""

    name: str
    sessions: Mapping[str, Session] = field(repr=False)

    def on(self, url: str) -> Session:
        """This session on server ``url``."""
        return self.sessions[url]


@dataclass(frozen=True)
class ClusterStepResult:
    """A cluster step: the updated parameters of every server, merged
    (empty with ``return_params=False``), and each server's own
    :class:`~optimd.StepResult` in ``results``, by URL.

    ``steps``, ``lr`` and ``next_lr`` are the first server's (in the order
    the cluster lists them); every server steps on every call, so they agree
    unless an earlier step failed part-way."""

    params: dict[str, Array]
    results: dict[str, StepResult]

    def _first(self) -> StepResult:
        return next(iter(self.results.values()))

    @property
    def steps(self) -> int:
        return self._first().steps

    @property
    def lr(self) -> float:
        return self._first().lr

    @property
    def next_lr(self) -> float:
        return self._first().next_lr

    @property
    def duplicate(self) -> bool:
        """True when every server had already applied this sequenced step."""
        return all(r.duplicate for r in self.results.values())


class Cluster:
    """One :class:`~optimd.Client` per server (``client_kwargs`` go to each:
    ``timeout``, ``connect``, ``tls_*``), and the session ops spread over
    them by :func:`place`.

    Requests go to the servers one at a time, in the order of ``urls``, and
    a server that holds none of the parameters a call names gets no request,
    except for ``step``, which every server gets (with no gradients if it
    holds none of them) so that step counts and server-side schedules keep
    pace everywhere, as one server's would.

    Not shared across servers, so not supported here:

    - ``clip_norm``: a server sees only its own gradients, so it cannot
      compute the global norm; with more than one server it raises
      ValueError (``clip_value``, element by element, works anywhere).
    - Atomicity: a call is one request per server. When one server refuses a
      step (or a transport error occurs), the servers before it in ``urls``
      have applied it and the later ones were not asked; the exception (the
      server's own :class:`~optimd.OptimdError` subclass, or
      :class:`~optimd.TransportError`) carries ``url`` (the server that
      failed) and ``applied`` (the URLs that applied the step). Steps sent
      with ``seq``/``client`` can be retried safely: each server's session
      remembers the sequence numbers it applied.
    - Optimizers that couple parameters (none of the bundled ones do) would
      see only each server's share.
    """

    def __init__(self, urls: Sequence[str], *, parallel: bool = False, **client_kwargs: Any) -> None:
        """``parallel``: ``step`` sends to every server at once (one thread
        each) instead of one after another; see :meth:`step`."""
        urls = tuple(urls)
        if not urls:
            raise ValueError("a cluster needs at least one server URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"server URLs listed twice: {urls!r}")
        self.urls: tuple[str, ...] = urls
        self.parallel = parallel
        self._pool: ThreadPoolExecutor | None = None
        self.clients: dict[str, Client] = {}
        self._client_kwargs = client_kwargs
        try:
            for url in urls:
                self.clients[url] = Client(url, **client_kwargs)
        except BaseException:
            self.close()
            raise

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Closes every connection (sessions stay on the daemons)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for client in self.clients.values():
            client.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({list(self.urls)!r})"

    # -- placement --------------------------------------------------------

    def placement(self, name: str) -> str:
        """The URL of the server that holds parameter ``name``."""
        return place(name, self.urls)

    def split(self, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """``values`` (by parameter name) cut into one map per server that
        holds any of them, in the order of ``urls``."""
        parts: dict[str, dict[str, Any]] = {url: {} for url in self.urls}
        for name, value in values.items():
            parts[self.placement(name)][name] = value
        return {url: part for url, part in parts.items() if part}

    # -- session ops ------------------------------------------------------

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
    ) -> ClusterSession:
        """Opens session ``session`` on every server, as
        :meth:`Client.open` does (``workers``: every server's share has the
        same workers; see :meth:`join`). If one server refuses, the sessions already
        opened on the others are closed again (best effort) and its error is
        raised, with ``url`` set."""
        opened: dict[str, Session] = {}
        for url in self.urls:
            try:
                opened[url] = self.clients[url].open(
                    session, optimizer, hparams, scheduler=scheduler,
                    sched_hparams=sched_hparams, groups=groups, durability=durability,
                    open_key=open_key, lookahead=lookahead, schedulers=schedulers,
                    milestones=milestones, workers=workers)
            except (OptimdError, TransportError) as exc:
                for done_url, done in opened.items():
                    try:
                        self.clients[done_url].close_session(done)
                    except (OptimdError, TransportError):
                        pass
                _annotate(exc, url, ())
                raise
        return ClusterSession(session, opened)

    def attach(self, session: ClusterSession) -> dict[str, SessionInfo]:
        """Checks the token on every server; each server's ``info``, by URL."""
        return {url: self.clients[url].attach(s) for url, s in self._each(session)}

    def info(self, session: ClusterSession) -> dict[str, SessionInfo]:
        """Each server's :meth:`Client.info` of its share, by URL."""
        return {url: self.clients[url].info(s) for url, s in self._each(session)}

    def set_hparams(
        self, session: ClusterSession, hparams: Mapping[str, HparamValue], group: str | None = None
    ) -> dict[str, Hparams]:
        """:meth:`Client.set_hparams` on every server, by URL."""
        return {url: self.clients[url].set_hparams(s, hparams, group)
                for url, s in self._each(session)}

    def close_session(self, session: ClusterSession) -> None:
        """Closes the session on every server; after trying them all, raises
        the first error (with ``url`` set), if any."""
        first: BaseException | None = None
        for url, s in self._each(session):
            try:
                self.clients[url].close_session(s)
            except (OptimdError, TransportError) as exc:
                if first is None:
                    _annotate(exc, url, ())
                    first = exc
        if first is not None:
            raise first

    def register(
        self, session: ClusterSession, params: Mapping[str, npt.ArrayLike], group: str | None = None
    ) -> int:
        """Registers each parameter on its server, one request per server
        holding any; returns the count. A refusal leaves the earlier servers'
        parameters registered (the error's ``applied`` lists them)."""
        count = 0
        applied: list[str] = []
        for url, part in self.split(params).items():
            try:
                count += self.clients[url].register(session.on(url), part, group)
            except (OptimdError, TransportError) as exc:
                _annotate(exc, url, tuple(applied))
                raise
            applied.append(url)
        return count

    def step(
        self,
        session: ClusterSession,
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
    ) -> ClusterStepResult:
        """One step on every server with its share of ``grads``; the updated
        parameters come back merged. ``seq``/``client`` go to every server
        (each session keeps its own record, so a retry after a partial
        failure is applied only where it was not). ``clip_norm`` with more
        than one server raises ValueError: no server sees the global norm.
        ``worker``: a push by that worker to every server (in the order of
        ``urls``, so the workers of a sync session complete each server's
        round in turn).

        With ``parallel=True`` (the constructor's) every server is asked at
        once, one thread each, and the call takes as long as the slowest
        server rather than their sum. Every server is then asked even when
        one refuses: the exception is the first failing server's in the order
        of ``urls``, and ``applied`` lists every server that applied the step
        (possibly some after the failing one). ``part_elements`` and
        ``parts_in_flight`` send each server's share as a sliced step
        (:meth:`Client.step <optimd.Client.step>`; needs ``seq``)."""
        if clip_norm is not None and len(self.urls) > 1:
            raise ValueError(
                "clip_norm needs the norm over every gradient, and each server sees only its "
                "own: clip before calling step (or use clip_value) with several servers")
        parts = self.split(grads)
        results: dict[str, StepResult] = {}

        def one(url: str, s: Session) -> StepResult:
            return self.clients[url].step(
                s, parts.get(url, {}), return_params=return_params, seq=seq, client=client,
                clip_value=clip_value, clip_norm=clip_norm, worker=worker, part_elements=part_elements,
                parts_in_flight=parts_in_flight)

        if self.parallel and len(self.urls) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=len(self.urls), thread_name_prefix="optimd-cluster")
            futures = [(url, self._pool.submit(one, url, s)) for url, s in self._each(session)]
            failed: tuple[str, BaseException] | None = None
            for url, future in futures:
                exc = future.exception()
                if exc is None:
                    results[url] = future.result()
                elif failed is None:
                    failed = (url, exc)
            if failed is not None:
                url, exc = failed
                if isinstance(exc, (OptimdError, TransportError)):
                    _annotate(exc, url, tuple(results))
                raise exc
        else:
            for url, s in self._each(session):
                try:
                    results[url] = one(url, s)
                except (OptimdError, TransportError) as exc:
                    _annotate(exc, url, tuple(results))
                    raise
        params: dict[str, Array] = {}
        for result in results.values():
            params.update(result.params)
        return ClusterStepResult(params, results)

    def join(self, session: ClusterSession, worker: str) -> dict[str, JoinResult]:
        """Joins ``worker`` on every server; each server's reply, by URL."""
        return {url: self.clients[url].join(s, worker) for url, s in self._each(session)}

    def leave(self, session: ClusterSession, worker: str) -> dict[str, JoinResult]:
        """Removes ``worker`` on every server; each server's reply, by URL."""
        return {url: self.clients[url].leave(s, worker) for url, s in self._each(session)}

    def pull(self, session: ClusterSession, names: Iterable[str] | None = None) -> dict[str, Array]:
        """Current values of the named parameters (default: all, from every
        server), merged."""
        out: dict[str, Array] = {}
        if names is None:
            for url, s in self._each(session):
                # Only what is placed there: a server may keep a stale copy
                # after an interrupted reshard.
                out.update((n, v) for n, v in self.clients[url].pull(s).items()
                           if self.placement(n) == url)
        else:
            for url, part in self.split({n: None for n in names}).items():
                out.update(self.clients[url].pull(session.on(url), part))
        return out

    # -- resharding ---------------------------------------------------------

    def plan_reshard(self, session: ClusterSession, urls: Sequence[str]) -> ReshardPlan:
        """What :meth:`reshard` to ``urls`` would move (nothing changes)."""
        held = {url: [p.name for p in info.params] for url, info in self.info(session).items()}
        return plan_reshard(held, self._check_urls(urls))

    def reshard(
        self, session: ClusterSession, urls: Sequence[str], *, batch_bytes: int = DEFAULT_BATCH_BYTES
    ) -> ClusterSession:
        """Moves ``session`` from this cluster's servers to ``urls`` (any
        others, or some of the same) and makes ``urls`` this cluster's
        servers; returns the session on them (new servers' sessions have
        tokens of their own). Training must pause meanwhile: a step or
        register sent during a reshard can be lost or refused.

        Each parameter whose placement changes is exported with its state
        from its old server, imported into the session on its new server
        (made there by importing the first share, with the old servers'
        settings, step count and schedule), and removed from the old server
        only once every parameter has its copy (see :mod:`optimd.reshard`).
        The old servers that are not in ``urls`` are left without the
        session. At most ``batch_bytes`` (estimated) go in one request.

        Failure never loses a parameter:

        - While copying (the error has ``url``): the copies made so far are
          removed again (what could not be is in the error's ``leftover``,
          URL -> (session, names or None for the whole session)); the old
          servers were not touched and the cluster keeps its servers.
        - While removing: every parameter is complete on its new server, so
          the cluster uses ``urls`` anyway; the error carries ``session``
          (the session on ``urls``, as this method would have returned it)
          and ``leftover`` (stale copies on old servers). Stale copies are
          never read (:meth:`pull` takes each parameter from its placement
          only) and the next reshard deletes those on the cluster's servers.
        """
        new_urls = self._check_urls(urls)
        sessions = dict(self._each(session))
        infos = self.info(session)
        held = {url: [p.name for p in infos[url].params] for url in self.urls}
        plan = plan_reshard(held, new_urls)
        declared = {p.name: p for info in infos.values() for p in info.params}
        first = infos[self.urls[0]]
        slots = next((len(p.slots) for p in self.clients[self.urls[0]].plugins() if p.id == first.optimizer), 0)
        copies = 1 + slots + (first.lookahead is not None)
        clients = dict(self.clients)
        added: list[str] = []
        try:
            for url in plan.created:
                clients[url] = Client(url, **self._client_kwargs)
                added.append(url)
            new_sessions, leftover, error = run_reshard(
                plan, clients, sessions, session.name, declared, copies, batch_bytes,
                annotate=lambda exc, url: _annotate(exc, url, ()))
        except BaseException:
            for url in added:
                clients[url].close()
            raise
        for url in plan.dropped:
            clients[url].close()
        self.clients = {url: clients[url] for url in new_urls}
        self.urls = new_urls
        result = ClusterSession(session.name, new_sessions)
        if error is None and leftover:
            error = RuntimeError(f"parameters appeared on {sorted(leftover)} while resharding")
        if error is not None:
            setattr(error, "session", result)
            setattr(error, "leftover", leftover)
            raise error
        return result

    def _check_urls(self, urls: Sequence[str]) -> tuple[str, ...]:
        out = tuple(urls)
        if not out:
            raise ValueError("a cluster needs at least one server URL")
        if len(set(out)) != len(out):
            raise ValueError(f"server URLs listed twice: {out!r}")
        return out

    def _each(self, session: ClusterSession) -> list[tuple[str, Session]]:
        if set(session.sessions) != set(self.urls):
            raise ValueError(
                f"session {session.name!r} was opened on {sorted(session.sessions)}, "
                f"not on this cluster's {sorted(self.urls)}")
        return [(url, session.sessions[url]) for url in self.urls]


def _annotate(exc: BaseException, url: str, applied: tuple[str, ...]) -> None:
    # The server's own exception class is kept (so `except NonfiniteError`
    # still works); these say where it happened and what already changed.
    setattr(exc, "url", url)
    setattr(exc, "applied", applied)
