"""Steps that move no tensor bytes through the socket, for a client on the
daemon's host (docs/protocol.md, ``shm_attach``/``shm_step``).

>>> with optimd.Client("ipc:///run/optimd.sock") as c:             # doctest: +SKIP
...     s = c.open("run1", "adamw", {"lr": 1e-3})
...     c.register(s, {"w": w0})
...     with c.shared_memory(s) as shm:
...         shm.grads["w"][:] = grad            # fill the gradient in place
...         shm.step()                          # the daemon reads it there...
...         shm.params["w"]                     # ...and writes the new values here

The segment is a POSIX shared memory file this process creates (mode 0600,
a random name under ``/dev/shm``), sized for every chosen parameter and its
gradient at 64-byte aligned offsets. Once the daemon has mapped it, the
name is unlinked: the memory lives exactly as long as this process or the
daemon maps it, so a client that is killed leaves nothing behind.

The daemon keeps its own copy of the parameters and rewrites ``params``
after every step; the arrays in ``params`` are read-only so that nothing
writes them by mistake (writes would be overwritten anyway).
"""

from __future__ import annotations

import mmap
import os
import secrets
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .messages import ClipNormSpec
from .results import Array, Session, SharedStepResult

if TYPE_CHECKING:
    from .client import Client

__all__ = ["SharedMemory", "ALIGN"]

#: Every tensor in a segment starts at a multiple of this many bytes.
ALIGN: Final = 64

_SHM_DIR: Final = "/dev/shm"
_DTYPES: Final = {"f32": np.dtype("<f4"), "f64": np.dtype("<f8")}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class SharedMemory:
    """A session's parameters and gradients in one segment shared with the
    daemon. Made by :meth:`optimd.Client.shared_memory`; the client must be
    connected over ``ipc://`` (the daemon refuses other connections with
    :class:`~optimd.BadRequestError`).

    ``grads[name]`` are writable arrays: put each step's gradients there.
    ``params[name]`` are read-only arrays the daemon updates in place at
    each :meth:`step`. The attachment ends with :meth:`close`, when the
    client's connection closes, when the session is closed, and when the
    daemon restarts; after that, make a new one.
    """

    def __init__(self, client: Client, session: Session, names: Iterable[str] | None = None) -> None:
        self.client = client
        self.session = session
        info = client.info(session)
        by_name = {p.name: p for p in info.params}
        chosen = list(by_name) if names is None else list(names)
        if isinstance(names, str):
            raise TypeError("names is an iterable of parameter names, not one str")
        layout: dict[str, tuple[int, int]] = {}
        specs: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        offset = 0
        for name in chosen:
            if name not in by_name:
                raise KeyError(f"session {session.name!r} has no parameter {name!r}")
            p = by_name[name]
            dtype, shape = _DTYPES[p.dtype], tuple(int(d) for d in p.shape)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            param_at = _align(offset)
            grad_at = _align(param_at + nbytes)
            offset = grad_at + nbytes
            layout[name] = (param_at, grad_at)
            specs[name] = (dtype, shape)
        self.size = max(_align(offset), ALIGN)
        #: The POSIX shm name ("/optimd-...") the daemon opened.
        self.name = "/optimd-" + secrets.token_hex(16)
        path = _SHM_DIR + self.name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._map: mmap.mmap | None = None
        try:
            # The umask may have taken bits; the daemon wants exactly owner-only.
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, self.size)
            self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        try:
            self.params: dict[str, Array] = {}
            self.grads: dict[str, Array] = {}
            for name, (param_at, grad_at) in layout.items():
                dtype, shape = specs[name]
                view = np.ndarray(shape, dtype, buffer=self._map, offset=param_at)
                view.flags.writeable = False
                self.params[name] = view
                self.grads[name] = np.ndarray(shape, dtype, buffer=self._map, offset=grad_at)
            self.layout: Mapping[str, tuple[int, int]] = layout
            client.shm_attach(session, self.name, self.size, layout)
        except BaseException:
            self._release()
            raise
        finally:
            # Mapped by the daemon (or refused): the name has done its job.
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.attached = True

    def step(
        self,
        names: Iterable[str] | None = None,
        *,
        seq: int | None = None,
        client: str | None = None,
        clip_value: float | None = None,
        clip_norm: ClipNormSpec | None = None,
    ) -> SharedStepResult:
        """One optimizer step with the gradients now in ``grads`` (of
        ``names``, default every parameter of the segment; the others are
        left alone as a torch parameter whose ``.grad`` is None). Returns the
        counters of :meth:`optimd.Client.step`; the new values are in
        ``params`` when it returns. ``seq``/``client``/``clip_*`` as there."""
        return self.client.shm_step(self.session, names, seq=seq, client=client, clip_value=clip_value,
                                    clip_norm=clip_norm)

    def close(self) -> None:
        """Detaches the segment from the daemon and unmaps it here. Arrays
        taken from ``params``/``grads`` keep their memory alive until they go
        (then the mapping closes with them)."""
        if self.attached:
            self.attached = False
            try:
                self.client.shm_detach(self.session)
            finally:
                self._release()

    def _release(self) -> None:
        self.params, self.grads = {}, {}
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # arrays still view it; it closes when they are gone
            self._map = None

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SharedMemory({self.session.name!r}, {self.name!r}, {len(self.layout)} parameters)"
