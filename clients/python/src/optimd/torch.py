"""``RemoteOptimizer``: a ``torch.optim.Optimizer`` whose updates run in optimd.

The torch parameter groups map onto the daemon's parameter groups (protocol
``open``'s ``groups``): the groups given at construction share one session,
group 0 as the daemon's ``"default"`` group and group *i* as ``"g<i>"``, each
with its own hyperparameters and lr. A group's parameters are registered as
``"<group index>.<position>"`` with their values at the first ``step()``.

Protocol 1 cannot add a group to a running session, so ``add_param_group``
reopens the session with the new group while nothing has been registered in
it, and afterwards puts the group in a new session of its own (named
``<session>.<k>``); ``step()`` steps every session once.

From the first step on, the daemon holds the authoritative copy of every
parameter and of its optimizer state; ``step()`` sends the gradients and writes
the returned values into the parameters in place. There is no op to upload new
values for a registered parameter, so changing one in place outside ``step()``
makes the next ``step()`` raise (seen through the tensor's version counter)
rather than be silently overwritten.

State dicts: ``state_dict()`` holds torch's ``param_groups``, the optimizer
state read from the daemon (op ``state``) in torch's ``state`` layout, and
each session's ``export`` snapshot. ``load_state_dict()`` restores by
``import``-ing those snapshots as new sessions: that is exact (parameters,
every slot, counters, schedules, as the daemon stores them) and works whatever
happened to the original sessions since (they may have moved on, or be gone,
or live on another daemon), which reattaching to them could not. The ``state``
entry is for reading (inspection, evaluation); the snapshots are what is
restored, since no op uploads state slots.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import numpy.typing as npt
import torch
from torch.optim.optimizer import Optimizer, required  # type: ignore[attr-defined]

from .client import DEFAULT_URL, Client
from .errors import OptimdError, ProtocolError, TransportError, UnknownSessionError
from .messages import Group
from .results import GroupInfo, Hparams, PluginInfo, Session, SessionInfo
from .wire import HparamValue

__all__ = ["RemoteOptimizer", "STATE_DICT_FORMAT"]

#: Version of the ``"optimd"`` entry of ``RemoteOptimizer.state_dict()``.
STATE_DICT_FORMAT = 2

_WIRE_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


@dataclass
class _Remote:
    """A daemon session and the torch groups it serves, in its group order
    (the first is its ``"default"`` group)."""

    session: Session
    owned: bool  # created by this optimizer (open or import)
    groups: list[int]
    steps: int = 0  # the session's step count after our last exchange
    seq: int | None = None  # sliced steps: the last seq sent (None: not asked yet)
    # After load_state_dict: the daemon's parameter values are compared with
    # the local ones before the next step.
    verify: bool = False

    def touched(self, members: list[_Member]) -> bool:
        return self.steps > 0 or any(members[i].registered for i in self.groups)


@dataclass
class _Member:
    """A torch parameter group's place on the daemon."""

    remote: _Remote
    name: str  # the daemon's name of the group
    registered: int = 0  # positions 0..registered-1 of the group are registered
    # The daemon's hyperparameters; "lr" is the lr its next step will use.
    synced: dict[str, HparamValue] = field(default_factory=dict)
    # Each registered parameter's version counter after we last wrote it.
    versions: list[int] = field(default_factory=list)


def _param_name(group: int, position: int) -> str:
    return f"{group}.{position}"


def _grad_array(grad: torch.Tensor) -> npt.NDArray[Any]:
    """A gradient as a numpy array: a view for a dense CPU tensor."""
    if grad.is_sparse:
        raise RuntimeError("RemoteOptimizer does not support sparse gradients")
    grad = grad.detach()
    if grad.device.type != "cpu":
        grad = grad.cpu()
    array: npt.NDArray[Any] = grad.numpy()
    return array


def _tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    # The reply's arrays are read-only views of the message; torch wants its own.
    return torch.from_numpy(np.array(array))


class RemoteOptimizer(Optimizer):
    """A drop-in ``torch.optim.Optimizer`` whose updates the optimd daemon at
    ``server`` computes with its ``optimizer`` plugin (``"sgd"``, ``"adam"``,
    ``"adamw"``...).

    ``hyperparameters`` are the plugin's (``lr``, ``momentum``,
    ``weight_decay``, ``beta1``, ``beta2``...; ``betas=(b1, b2)`` is accepted
    for plugins that declare ``beta1``/``beta2``). Every declared
    hyperparameter appears in each ``param_groups`` entry, with the plugin's
    default where none was given. Changing a group's value (``group["lr"] =
    ...``, or a torch LR scheduler doing so) reaches the daemon before the next
    step; only hyperparameters the plugin declares mutable may change.

    ``server`` is a URL or a :class:`~optimd.Client` (shared, left open by
    :meth:`close`); for a URL, ``tls_ca_file``, ``tls_cert_file``,
    ``tls_key_file`` and ``tls_server_name`` go to the Client it makes (see
    :class:`~optimd.Client`; with a Client given they must be left out). ``scheduler``/``sched_hparams`` select a server-side
    scheduler, which every group runs from its own lr; after each step
    ``group["lr"]`` shows the lr of the group's next one.

    ``part_elements`` sends each step in parts of about that many elements,
    pipelined, so the daemon updates one part while the next is on the wire
    (:meth:`~optimd.Client.step`); it needs an optimizer that takes sliced
    steps (``PluginInfo.sliced``: adam, adamw, sgd, ...), and numbers its steps
    (client id ``"torch.RemoteOptimizer"``, resuming above the session's
    record), which also makes a retried step safe. For models of millions of
    parameters it is the faster way to step (docs/performance.md).

    Sessions outlive the optimizer; :meth:`delete_sessions` removes them from
    the daemon.
    """

    #: The client id sliced steps are numbered under.
    SEQ_CLIENT = "torch.RemoteOptimizer"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        optimizer: str,
        server: str | Client = DEFAULT_URL,
        session: str | None = None,
        *,
        scheduler: str | None = None,
        sched_hparams: dict[str, HparamValue] | None = None,
        timeout: float | None = 30.0,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_server_name: str | None = None,
        part_elements: int | None = None,
        **hyperparameters: Any,
    ) -> None:
        if part_elements is not None and part_elements < 1:
            raise ValueError(f"part_elements must be at least 1, not {part_elements}")
        self.part_elements = part_elements
        tls = {"tls_ca_file": tls_ca_file, "tls_cert_file": tls_cert_file,
               "tls_key_file": tls_key_file, "tls_server_name": tls_server_name}
        if isinstance(server, Client):
            given = [k for k, v in tls.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: a Client passed as server brings its own TLS "
                                 "options")
            self._client, self._owns_client = server, False
        else:
            self._client, self._owns_client = Client(server, timeout, **tls), True
        self.optimizer_id = optimizer
        self.scheduler_id = scheduler
        self.sched_hparams = dict(sched_hparams or {})
        self.session_name = session if session is not None else f"torch-{uuid.uuid4().hex[:16]}"
        self._remotes: list[_Remote] = []
        self._members: list[_Member] = []
        self._constructing = True
        try:
            self._plugin = self._find_plugin(optimizer)
            if part_elements is not None and self._plugin is not None and not self._plugin.sliced:
                raise ValueError(f"optimizer {optimizer!r} does not take sliced steps (its update is not "
                                 "element-wise): leave part_elements out")
            defaults: dict[str, Any] = {}
            if self._plugin is not None:
                for decl in self._plugin.hparams:
                    defaults[decl.key] = required if decl.default is None else decl.default
            defaults.update(self._normalize(dict(hyperparameters)))
            self._server_keys = set(defaults)
            super().__init__(params, defaults)
            self._constructing = False
            self._open(list(range(len(self.param_groups))), self.session_name)
        except BaseException:
            if self._owns_client:
                self._client.close()
            raise

    # -- construction -----------------------------------------------------

    def _find_plugin(self, optimizer: str) -> PluginInfo | None:
        """The optimizer's declarations; None when the daemon lists no such
        optimizer, in which case ``open`` raises the daemon's own error."""
        for plugin in self._client.plugins():
            if plugin.id == optimizer and plugin.kind == "optimizer":
                return plugin
        return None

    def _normalize(self, options: dict[str, Any]) -> dict[str, Any]:
        """torch's ``betas=(b1, b2)`` as the plugin's ``beta1``/``beta2``."""
        if "betas" in options and self._plugin is not None:
            keys = {decl.key for decl in self._plugin.hparams}
            if {"beta1", "beta2"} <= keys and "betas" not in keys:
                if "beta1" in options or "beta2" in options:
                    raise ValueError("give either betas or beta1/beta2, not both")
                options["beta1"], options["beta2"] = options.pop("betas")
        return options

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group as torch does. After construction the group joins the
        last session if nothing was registered in it yet (by reopening it),
        else it gets a session of its own."""
        group = self._normalize(dict(param_group))
        super().add_param_group(group)
        try:
            for p in group["params"]:
                wire = _WIRE_DTYPES.get(p.dtype)
                if wire is None or (self._plugin is not None and wire not in self._plugin.dtypes):
                    supported = self._plugin.dtypes if self._plugin else ("f32", "f64")
                    raise TypeError(f"{self.optimizer_id} updates {'/'.join(supported)} parameters, not {p.dtype}")
            if self._constructing:
                return  # __init__ opens one session for all the groups
            index = len(self.param_groups) - 1
            last = self._remotes[-1] if self._remotes else None
            if last is not None and last.owned and not last.touched(self._members):
                self._reopen(last, index)
            else:
                self._open([index], f"{self.session_name}.{len(self._remotes)}")
        except BaseException:
            self.param_groups.pop()
            raise

    def _server_hparams(self, group: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in group.items() if k in self._server_keys}

    def _open_request(self, indices: list[int], name: str) -> Session:
        first = self._server_hparams(self.param_groups[indices[0]])
        groups = [Group(f"g{i}", self._server_hparams(self.param_groups[i])) for i in indices[1:]]
        return self._client.open(
            name, self.optimizer_id, first, scheduler=self.scheduler_id,
            sched_hparams=self.sched_hparams or None, groups=groups,
            open_key=uuid.uuid4().hex)

    def _open(self, indices: list[int], name: str) -> None:
        session = self._open_request(indices, name)
        remote = _Remote(session=session, owned=True, groups=indices)
        self._remotes.append(remote)
        self._attach_members(remote)

    def _reopen(self, remote: _Remote, index: int) -> None:
        """``remote`` again with group ``index`` added: protocol 1 has no op
        that adds a group, and nothing was registered in it yet."""
        indices = remote.groups + [index]
        session = self._open_request(indices, f"{remote.session.name[:100]}-{uuid.uuid4().hex[:12]}")
        # Only once the new one exists is the old one given up, so a refused
        # group leaves the optimizer as it was.
        try:
            self._client.close_session(remote.session)
        except UnknownSessionError:
            pass
        replacement = self._client.import_session(self._client.export(session), remote.session.name)
        self._client.close_session(session)
        remote.session, remote.groups = replacement.session, indices
        self._attach_members(remote)

    def _attach_members(self, remote: _Remote) -> None:
        hp = self._client.hparams(remote.session)
        for position, index in enumerate(remote.groups):
            name = "default" if position == 0 else f"g{index}"
            member = _Member(remote=remote, name=name)
            if index < len(self._members):
                self._members[index] = member
            else:
                self._members.append(member)
            group = self.param_groups[index]
            self._adopt(member, group, hp, self._server_hparams(group))

    def _adopt(self, member: _Member, group: dict[str, Any], hp: Hparams, keys: Iterable[str]) -> None:
        """Records the daemon's hyperparameters of the member's group and
        writes its canonical values of ``keys`` (and of any key the group
        lacks) into the torch group."""
        info: GroupInfo = hp.group(member.name)
        member.synced = dict(info.hparams)
        member.synced["lr"] = info.lr
        for key in keys:
            if key in member.synced:
                group[key] = member.synced[key]
        for key, value in member.synced.items():
            group.setdefault(key, value)
        self._server_keys.update(member.synced)

    # -- stepping ---------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step: pushes changed hyperparameters, registers
        parameters not yet registered, sends the gradients of the parameters
        whose ``.grad`` is not None, and writes the updated values into those
        parameters in place. Every session steps, even without gradients, so
        a server-side schedule advances once per call as torch's
        ``scheduler.step()`` would. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for remote in self._remotes:
            self._step_remote(remote)
        return loss

    def _step_remote(self, remote: _Remote) -> None:
        grads: dict[str, npt.NDArray[Any]] = {}
        targets: dict[str, tuple[_Member, int, torch.Tensor]] = {}
        if remote.verify:
            self._verify_restored(remote)
        for index in remote.groups:
            member, group = self._members[index], self.param_groups[index]
            params: list[torch.Tensor] = group["params"]
            self._check_unchanged(index, member, params)
            self._push_hparams(member, group)
            self._register_new(index, member, params)
            for position, p in enumerate(params):
                name = _param_name(index, position)
                targets[name] = (member, position, p)
                if p.grad is not None:
                    grads[name] = _grad_array(p.grad)
        if self.part_elements is None:
            result = self._client.step(remote.session, grads)
        else:
            if remote.seq is None:
                info = self._client.info(remote.session, client=self.SEQ_CLIENT)
                remote.seq = info.client_seq or 0
                pending = info.pending_step
                if pending is not None and pending.client == self.SEQ_CLIENT:
                    # An optimizer before this one died mid-step; its gradients died with it.
                    warnings.warn(f"session {remote.session.name}: abandoning sliced step {pending.seq}, "
                                  f"left with {pending.applied} of {pending.count} parts applied")
                    self._client.abandon_step(remote.session, pending.seq, self.SEQ_CLIENT)
                    remote.seq = pending.seq
            remote.seq += 1
            result = self._client.step(remote.session, grads, seq=remote.seq, client=self.SEQ_CLIENT,
                                       part_elements=self.part_elements)
        remote.steps = result.steps
        if set(result.params) - set(grads):
            raise ProtocolError("step: the daemon returned parameters that had no gradient")
        with warnings.catch_warnings():
            # The reply's arrays are read-only views; torch only reads them here.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, value in result.params.items():
                member, position, p = targets[name]
                if value.shape != tuple(p.shape):
                    raise ProtocolError(f"step: parameter {name} came back with shape {value.shape}")
                p.copy_(torch.from_numpy(value))
                member.versions[position] = p._version
        for index in remote.groups:
            member = self._members[index]
            self.param_groups[index]["lr"] = member.synced["lr"] = result.group_next_lr(member.name)

    def _check_unchanged(self, index: int, member: _Member, params: list[torch.Tensor]) -> None:
        if len(params) < member.registered:
            raise RuntimeError(
                f"parameter group {index} lost parameters after they were registered with the daemon"
            )
        for i in range(member.registered):
            if params[i]._version != member.versions[i]:
                raise RuntimeError(
                    f"parameter {i} of group {index} was modified in place outside step(); "
                    "the daemon holds its own copy and protocol 1 cannot upload new values "
                    "(start a new optimizer to train from the changed values)"
                )

    def _verify_restored(self, remote: _Remote) -> None:
        """After load_state_dict: the daemon's values (the snapshot's) must be
        the parameters' (the model's own checkpoint), else the next step would
        overwrite them."""
        names = [_param_name(i, pos) for i in remote.groups for pos in range(self._members[i].registered)]
        pulled = self._client.pull(remote.session, names)
        for i in remote.groups:
            params = self.param_groups[i]["params"]
            for pos in range(self._members[i].registered):
                p = params[pos].detach().cpu()
                if not torch.equal(p, _tensor(pulled[_param_name(i, pos)])):
                    raise RuntimeError(
                        f"parameter {pos} of group {i} differs from the value in the loaded optimizer "
                        "state dict; load the model's weights from the same checkpoint")
        remote.verify = False

    def _push_hparams(self, member: _Member, group: dict[str, Any]) -> None:
        changes = {k: group[k] for k, v in member.synced.items() if k in group and group[k] != v}
        if changes:
            hp = self._client.set_hparams(member.remote.session, changes, group=member.name)
            self._adopt(member, group, hp, changes)

    def _register_new(self, index: int, member: _Member, params: list[torch.Tensor]) -> None:
        if member.registered == len(params):
            return
        new = {
            _param_name(index, i): p.detach().cpu().numpy()
            for i, p in enumerate(params[member.registered:], start=member.registered)
        }
        self._client.register(member.remote.session, new, group=member.name)
        member.versions.extend(p._version for p in params[member.registered:])
        member.registered = len(params)

    # -- state ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's layout plus an ``"optimd"`` entry.

        ``state`` maps each parameter's index (torch's numbering across
        groups) to its optimizer state read from the daemon (slot key ->
        tensor, e.g. AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``); a
        parameter that never stepped has none. ``param_groups`` are torch's.
        ``"optimd"`` holds, per session, its name, token, step count, the torch
        groups it serves and its ``export`` snapshot, which is what
        :meth:`load_state_dict` restores. A state dict holds tokens and whole
        sessions: whoever has it can drive or copy them."""
        groups, state = [], {}
        index_of: dict[str, int] = {}
        start = 0
        for gi, group in enumerate(self.param_groups):
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            for pos in range(len(group["params"])):
                index_of[_param_name(gi, pos)] = start + pos
            start += len(group["params"])
            groups.append(packed)
        sessions = []
        for remote in self._remotes:
            for name, slots in self._client.state(remote.session).items():
                if slots and name in index_of:
                    state[index_of[name]] = {key: _tensor(value) for key, value in slots.items()}
            sessions.append({
                "session": remote.session.name,
                "token": remote.session.token,
                "steps": remote.steps,
                "groups": list(remote.groups),
                "snapshot": self._client.export(remote.session),
            })
        return {
            "state": state,
            "param_groups": groups,
            "optimd": {
                "format": STATE_DICT_FORMAT,
                "optimizer": self.optimizer_id,
                "scheduler": self.scheduler_id,
                "sessions": sessions,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`: each of its sessions is imported
        from its snapshot as a new session of this optimizer, and the groups'
        options are restored as torch does. Checks first: same group layout,
        same optimizer; then that each imported session has this optimizer's
        groups and parameters (names, dtypes, shapes). The parameters' values
        must be those of the same checkpoint (the daemon's copy comes from
        the snapshot): the next step compares them and raises if not. Sessions
        this optimizer made and never used are closed; the others (and the
        state dict's originals) are left alone."""
        meta = state_dict.get("optimd")
        if not isinstance(meta, dict):
            raise ValueError(
                "not a RemoteOptimizer state dict: the optimizer state of a local torch "
                "optimizer cannot be uploaded to optimd (protocol 1 has no op for it)"
            )
        if meta.get("format") != STATE_DICT_FORMAT:
            raise ValueError(f"unsupported RemoteOptimizer state dict format {meta.get('format')!r}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for group, saved in zip(self.param_groups, saved_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
                )
        if meta["optimizer"] != self.optimizer_id:
            raise ValueError(f"loaded state dict is for optimizer {meta['optimizer']!r}, not {self.optimizer_id!r}")
        entries = meta["sessions"]
        if sorted(i for e in entries for i in e["groups"]) != list(range(len(self.param_groups))):
            raise ValueError("loaded state dict's sessions do not cover its parameter groups")

        base = f"torch-{uuid.uuid4().hex[:16]}"
        imported: list[tuple[_Remote, SessionInfo]] = []
        try:
            for k, entry in enumerate(entries):
                name = base if k == 0 else f"{base}.{k}"
                result = self._client.import_session(entry["snapshot"], name)
                remote = _Remote(session=result.session, owned=True, groups=list(entry["groups"]),
                                 steps=result.steps, verify=True)
                imported.append((remote, self._client.info(result.session)))
                self._check_imported(remote, imported[-1][1])
        except BaseException:
            for remote, _ in imported:
                try:
                    self._client.close_session(remote.session)
                except (OptimdError, TransportError):
                    pass  # best effort: the error that brought us here matters more
            raise

        for remote in self._remotes:
            if remote.owned and not remote.touched(self._members):
                try:
                    self._client.close_session(remote.session)
                except (OptimdError, TransportError):
                    pass
        self.session_name = base
        self._remotes = []
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        for remote, info in imported:
            self._remotes.append(remote)
            counts = {g.name: g.params for g in info.groups}
            for position, index in enumerate(remote.groups):
                member = _Member(remote=remote, name="default" if position == 0 else f"g{index}")
                member.registered = counts[member.name]
                member.versions = [p._version for p in self.param_groups[index]["params"][: member.registered]]
                g = info.group(member.name)
                member.synced = dict(g.hparams)
                member.synced["lr"] = g.lr
                self._members[index] = member

    def _check_imported(self, remote: _Remote, info: SessionInfo) -> None:
        name = info.session
        if info.optimizer != self.optimizer_id:
            raise ValueError(f"session {name} runs {info.optimizer!r}, not {self.optimizer_id!r}")
        expected_groups = ["default"] + [f"g{i}" for i in remote.groups[1:]]
        if [g.name for g in info.groups] != expected_groups:
            raise ValueError(f"session {name} has groups {[g.name for g in info.groups]}, not {expected_groups}")
        for registered in info.params:
            gi, _, pos = registered.name.partition(".")
            try:
                p = self.param_groups[int(gi)]["params"][int(pos)]
            except (ValueError, IndexError):
                raise ValueError(f"session {name} has parameter {registered.name!r}, which this optimizer lacks") from None
            expected = (_WIRE_DTYPES.get(p.dtype), tuple(p.shape))
            if (registered.dtype, registered.shape) != expected:
                raise ValueError(
                    f"session {name}: parameter {registered.name} is {registered.dtype}{list(registered.shape)}, "
                    f"this optimizer's is {p.dtype}{list(p.shape)}"
                )

    # -- lifetime ---------------------------------------------------------

    @property
    def client(self) -> Client:
        """The connection to the daemon."""
        return self._client

    @property
    def sessions(self) -> list[Session]:
        """The daemon sessions, in order (usually one)."""
        return [remote.session for remote in self._remotes]

    def group_session(self, index: int) -> tuple[Session, str]:
        """The session and daemon group name of torch group ``index``."""
        member = self._members[index]
        return member.remote.session, member.name

    def delete_sessions(self) -> None:
        """Closes every session of this optimizer on the daemon, dropping its
        state (sessions already gone are skipped). The optimizer cannot step
        afterwards."""
        for remote in self._remotes:
            try:
                self._client.close_session(remote.session)
            except UnknownSessionError:
                pass

    def close(self) -> None:
        """Closes the connection if this optimizer made it. Sessions stay."""
        if self._owns_client:
            self._client.close()
