"""``RemoteOptimizer``: a ``torch.optim.Optimizer`` whose updates run in optimd.

Each parameter group is one daemon session, so per-group options work as in
torch: the group's hyperparameters are the session's. Group 0's session is
named ``session`` (a generated ``torch-<hex>`` name by default), group *i*'s
``<session>.<i>``; a group's parameters are registered under their position
in the group (``"0"``, ``"1"``, ...) with their values at the first ``step()``.

From then on the daemon holds the authoritative copy of every parameter and
its optimizer state; ``step()`` sends the gradients and writes the returned
values into the parameters in place. Protocol 1 has no op that uploads new
values for a registered parameter or that reads or writes optimizer state, so:

* changing a parameter in place outside ``step()`` after the first step raises
  at the next ``step()`` (detected through the tensor's version counter) rather
  than being silently overwritten;
* ``state_dict()`` holds the hyperparameters and the sessions' identities
  (names, tokens, step counts), not the optimizer's moments, and
  ``load_state_dict()`` reattaches to those sessions; it refuses when a session
  has taken more steps than the state dict records, since the daemon cannot
  roll back.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy.typing as npt
import torch
from torch.optim.optimizer import Optimizer, required  # type: ignore[attr-defined]

from .client import DEFAULT_URL, Client
from .errors import OptimdError, ProtocolError, TransportError, UnknownSessionError
from .results import Hparams, PluginInfo, Session, SessionInfo
from .wire import HparamValue

__all__ = ["RemoteOptimizer", "STATE_DICT_FORMAT"]

#: Version of the ``"optimd"`` entry of ``RemoteOptimizer.state_dict()``.
STATE_DICT_FORMAT = 1

_WIRE_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


@dataclass
class _Remote:
    """A parameter group's daemon session, as this optimizer knows it."""

    session: Session
    owned: bool  # opened by this optimizer (and so free to close if unused)
    steps: int = 0  # the session's step count after our last exchange
    registered: int = 0  # parameters 0..registered-1 of the group are registered
    # The daemon's hyperparameters; "lr" is the lr its next step will use.
    synced: dict[str, HparamValue] = field(default_factory=dict)
    # Each registered parameter's version counter after we last wrote it.
    versions: list[int] = field(default_factory=list)


def _grad_array(grad: torch.Tensor) -> npt.NDArray[Any]:
    """A gradient as a numpy array: a view for a dense CPU tensor."""
    if grad.is_sparse:
        raise RuntimeError("RemoteOptimizer does not support sparse gradients")
    grad = grad.detach()
    if grad.device.type != "cpu":
        grad = grad.cpu()
    array: npt.NDArray[Any] = grad.numpy()
    return array


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
    :meth:`close`). ``scheduler``/``sched_hparams`` select a server-side
    scheduler; after each step ``group["lr"]`` shows the lr of the next one.

    Sessions outlive the optimizer (so ``load_state_dict`` can reattach);
    :meth:`delete_sessions` removes them from the daemon.
    """

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
        **hyperparameters: Any,
    ) -> None:
        if isinstance(server, Client):
            self._client, self._owns_client = server, False
        else:
            self._client, self._owns_client = Client(server, timeout), True
        self.optimizer_id = optimizer
        self.scheduler_id = scheduler
        self.sched_hparams = dict(sched_hparams or {})
        self.session_name = session if session is not None else f"torch-{uuid.uuid4().hex[:16]}"
        self._remotes: list[_Remote] = []
        try:
            self._plugin = self._find_plugin(optimizer)
            defaults: dict[str, Any] = {}
            if self._plugin is not None:
                for decl in self._plugin.hparams:
                    defaults[decl.key] = required if decl.default is None else decl.default
            defaults.update(self._normalize(dict(hyperparameters)))
            self._server_keys = set(defaults)
            super().__init__(params, defaults)
        except BaseException:
            self._discard_unused_sessions()
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
        """Adds a group as torch does, and opens its daemon session."""
        group = self._normalize(dict(param_group))
        super().add_param_group(group)
        try:
            params = group["params"]
            if len({id(p) for p in params}) != len(params):
                raise ValueError("a parameter appears twice in one group")
            for p in params:
                wire = _WIRE_DTYPES.get(p.dtype)
                if wire is None or (self._plugin is not None and wire not in self._plugin.dtypes):
                    supported = self._plugin.dtypes if self._plugin else ("f32", "f64")
                    raise TypeError(f"{self.optimizer_id} updates {'/'.join(supported)} parameters, not {p.dtype}")
            self._remotes.append(self._open_group(len(self.param_groups) - 1, group))
        except BaseException:
            self.param_groups.pop()
            raise

    def _group_session_name(self, index: int) -> str:
        return self.session_name if index == 0 else f"{self.session_name}.{index}"

    def _open_group(self, index: int, group: dict[str, Any]) -> _Remote:
        hparams = {k: v for k, v in group.items() if k in self._server_keys}
        session = self._client.open(
            self._group_session_name(index),
            self.optimizer_id,
            hparams,
            scheduler=self.scheduler_id,
            sched_hparams=self.sched_hparams or None,
        )
        remote = _Remote(session=session, owned=True)
        self._adopt_hparams(remote, group, self._client.hparams(session), list(hparams))
        return remote

    def _adopt_hparams(self, remote: _Remote, group: dict[str, Any], hp: Hparams, keys: Iterable[str]) -> None:
        """Records the daemon's hyperparameters and writes its canonical
        values of ``keys`` (and of any key the group lacks) into the group."""
        remote.synced = dict(hp.hparams)
        remote.synced["lr"] = hp.lr
        for key in keys:
            if key in remote.synced:
                group[key] = remote.synced[key]
        for key, value in remote.synced.items():
            group.setdefault(key, value)
        self._server_keys.update(remote.synced)

    # -- stepping ---------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step: for each group, pushes changed hyperparameters,
        registers parameters not yet registered, sends the gradients of the
        parameters whose ``.grad`` is not None, and writes the updated values
        into those parameters in place. Every group's session steps, even
        one without gradients, so a server-side schedule advances once per
        call as torch's ``scheduler.step()`` would."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._step_group(index, group)
        return loss

    def _step_group(self, index: int, group: dict[str, Any]) -> None:
        remote = self._remotes[index]
        params: list[torch.Tensor] = group["params"]
        self._check_unchanged(index, remote, params)
        self._push_hparams(remote, group)
        self._register_new(remote, params)
        grads = {str(i): _grad_array(p.grad) for i, p in enumerate(params) if p.grad is not None}
        result = self._client.step(remote.session, grads)
        remote.steps = result.steps
        if set(result.params) - set(grads):
            raise ProtocolError("step: the daemon returned parameters that had no gradient")
        with warnings.catch_warnings():
            # The reply's arrays are read-only views; torch only reads them here.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, value in result.params.items():
                i = int(name)
                p = params[i]
                if value.shape != tuple(p.shape):
                    raise ProtocolError(f"step: parameter {name} came back with shape {value.shape}")
                p.copy_(torch.from_numpy(value))
                remote.versions[i] = p._version
        group["lr"] = remote.synced["lr"] = result.next_lr

    def _check_unchanged(self, index: int, remote: _Remote, params: list[torch.Tensor]) -> None:
        if len(params) < remote.registered:
            raise RuntimeError(
                f"parameter group {index} lost parameters after they were registered with the daemon"
            )
        for i in range(remote.registered):
            if params[i]._version != remote.versions[i]:
                raise RuntimeError(
                    f"parameter {i} of group {index} was modified in place outside step(); "
                    "the daemon holds its own copy and protocol 1 cannot upload new values "
                    "(start a new optimizer to train from the changed values)"
                )

    def _push_hparams(self, remote: _Remote, group: dict[str, Any]) -> None:
        changes = {k: group[k] for k, v in remote.synced.items() if k in group and group[k] != v}
        if changes:
            hp = self._client.set_hparams(remote.session, changes)
            self._adopt_hparams(remote, group, hp, changes)

    def _register_new(self, remote: _Remote, params: list[torch.Tensor]) -> None:
        if remote.registered == len(params):
            return
        new = {
            str(i): p.detach().cpu().numpy()
            for i, p in enumerate(params[remote.registered :], start=remote.registered)
        }
        self._client.register(remote.session, new)
        remote.versions.extend(p._version for p in params[remote.registered :])
        remote.registered = len(params)

    # -- state ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's layout (``state``, ``param_groups`` with parameter indices)
        plus an ``"optimd"`` entry naming each group's session. ``state`` is
        empty: the optimizer's slots live in the daemon, which protocol 1 does
        not expose. The entry holds the sessions' tokens: whoever has the state
        dict can drive the sessions."""
        groups = []
        start = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        return {
            "state": {},
            "param_groups": groups,
            "optimd": {
                "format": STATE_DICT_FORMAT,
                "optimizer": self.optimizer_id,
                "scheduler": self.scheduler_id,
                "sessions": [
                    {"session": r.session.name, "token": r.session.token, "steps": r.steps}
                    for r in self._remotes
                ],
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Reattaches to the sessions of a :meth:`state_dict` and restores the
        groups' hyperparameters. Checks everything first: same group layout,
        same optimizer, each session reachable with its token and still at the
        step count the state dict recorded, and its registered parameters
        matching this optimizer's. Sessions this optimizer opened and never
        stepped are then closed."""
        meta = state_dict.get("optimd")
        if not isinstance(meta, dict):
            raise ValueError(
                "not a RemoteOptimizer state dict: the optimizer state of a local torch "
                "optimizer cannot be uploaded to optimd (protocol 1 has no op for it)"
            )
        if meta.get("format") != STATE_DICT_FORMAT:
            raise ValueError(f"unsupported RemoteOptimizer state dict format {meta.get('format')!r}")
        saved_groups = state_dict["param_groups"]
        entries = meta["sessions"]
        if len(saved_groups) != len(self.param_groups) or len(entries) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if meta["optimizer"] != self.optimizer_id:
            raise ValueError(f"loaded state dict is for optimizer {meta['optimizer']!r}, not {self.optimizer_id!r}")

        attached: list[tuple[_Remote, SessionInfo]] = []
        for index, (group, saved, entry) in enumerate(zip(self.param_groups, saved_groups, entries)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
                )
            session = Session(entry["session"], entry["token"])
            info = self._client.attach(session)
            self._check_attached(index, group["params"], entry, info)
            remote = _Remote(session=session, owned=False, steps=info.steps, registered=len(info.params))
            attached.append((remote, info))

        keep = {remote.session for remote, _ in attached}
        self._discard_unused_sessions(keep)
        self.session_name = attached[0][0].session.name  # names later groups' sessions
        self._remotes = []
        for group, saved, (remote, info) in zip(self.param_groups, saved_groups, attached):
            group.update({k: v for k, v in saved.items() if k != "params"})
            remote.synced = dict(info.hparams)
            remote.synced["lr"] = info.lr
            remote.versions = [p._version for p in group["params"][: remote.registered]]
            self._remotes.append(remote)

    def _check_attached(self, index: int, params: list[torch.Tensor], entry: dict[str, Any], info: SessionInfo) -> None:
        name = info.session
        if info.optimizer != self.optimizer_id:
            raise ValueError(f"session {name} runs {info.optimizer!r}, not {self.optimizer_id!r}")
        if info.steps != entry["steps"]:
            raise ValueError(
                f"session {name} has taken {info.steps} steps, the state dict was saved after "
                f"{entry['steps']}: the daemon's state has moved on and protocol 1 cannot roll it back"
            )
        if len(info.params) > len(params):
            raise ValueError(f"session {name} has more parameters than group {index}")
        for i, (registered, p) in enumerate(zip(info.params, params)):
            expected = (str(i), _WIRE_DTYPES.get(p.dtype), tuple(p.shape))
            if (registered.name, registered.dtype, registered.shape) != expected:
                raise ValueError(
                    f"session {name}: parameter {registered.name} is {registered.dtype}{list(registered.shape)}, "
                    f"group {index} has {p.dtype}{list(p.shape)} at position {i}"
                )

    # -- lifetime ---------------------------------------------------------

    @property
    def client(self) -> Client:
        """The connection to the daemon."""
        return self._client

    @property
    def sessions(self) -> list[Session]:
        """Each parameter group's session, in group order."""
        return [remote.session for remote in self._remotes]

    def delete_sessions(self) -> None:
        """Closes every group's session on the daemon, dropping its state
        (sessions already gone are skipped). The optimizer cannot step
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

    def _discard_unused_sessions(self, keep: Iterable[Session] = ()) -> None:
        """Closes the sessions this optimizer opened that never stepped."""
        kept = set(keep)
        for remote in self._remotes:
            if remote.owned and remote.steps == 0 and remote.session not in kept:
                try:
                    self._client.close_session(remote.session)
                except (OptimdError, TransportError):
                    pass  # best effort: the error that brought us here matters more
