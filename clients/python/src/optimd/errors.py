"""Exceptions of the optimd client.

Two families, because they mean different things for the caller:

* :class:`OptimdError` and its subclasses: the daemon answered with an error
  reply (docs/protocol.md §2, §6). The request changed nothing on the daemon,
  so it is safe to fix the input and send it again. There is one subclass per
  protocol error code; a code this client does not know raises
  :class:`OptimdError` itself.
* :class:`TransportError` and its subclasses: no valid reply came back (the
  daemon is unreachable, the reply timed out, the connection dropped, or the
  reply broke the protocol). Whether the request was applied is unknown: a
  ``step`` may or may not have happened (``Client.info`` tells, by its
  ``steps``). The client never resends on its own.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "OptimdError",
    "MalformedError",
    "BadRequestError",
    "UnknownOpError",
    "VersionError",
    "TooLargeError",
    "UnknownPluginError",
    "WrongKindError",
    "UnknownHparamError",
    "BadHparamError",
    "NotMutableError",
    "UnknownSessionError",
    "BadTokenError",
    "SessionExistsError",
    "LimitError",
    "UnknownWorkerError",
    "WorkerTimeoutError",
    "StepPendingError",
    "UnknownParamError",
    "ParamExistsError",
    "BadTensorError",
    "NonfiniteError",
    "PluginError",
    "InternalError",
    "NoMemoryError",
    "ShuttingDownError",
    "StorageError",
    "TransportError",
    "RequestTimeout",
    "ProtocolError",
    "ERROR_CLASSES",
    "error_from_reply",
]


class OptimdError(Exception):
    """The daemon refused a request; nothing changed on the daemon.

    Attributes:
        code: the protocol error code (docs/protocol.md §6), e.g. ``21``.
        name: its stable name, e.g. ``"BAD_TOKEN"``.
        message: the daemon's human-readable text (not stable; do not parse).
        request_id: the ``id`` of the reply (``0`` when the daemon could not
            decode the request).
    """

    #: The protocol code a subclass stands for; ``None`` on the base class.
    CODE: int | None = None

    def __init__(self, code: int, name: str, message: str, request_id: int = 0) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.code = code
        self.name = name
        self.message = message
        self.request_id = request_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.name, self.message, self.request_id))


class MalformedError(OptimdError):
    """1 MALFORMED: the message is not one msgpack map."""

    CODE = 1


class BadRequestError(OptimdError):
    """2 BAD_REQUEST: a required key is missing or a key has the wrong type."""

    CODE = 2


class UnknownOpError(OptimdError):
    """3 UNKNOWN_OP: ``op`` names no operation."""

    CODE = 3


class VersionError(OptimdError):
    """4 VERSION: ``v`` is not a supported protocol version."""

    CODE = 4


class TooLargeError(OptimdError):
    """5 TOO_LARGE: the request exceeds the daemon's ``max_message``."""

    CODE = 5


class UnknownPluginError(OptimdError):
    """10 UNKNOWN_PLUGIN: no loaded plugin has that id."""

    CODE = 10


class WrongKindError(OptimdError):
    """11 WRONG_KIND: a scheduler given as optimizer, or the reverse."""

    CODE = 11


class UnknownHparamError(OptimdError):
    """12 UNKNOWN_HPARAM: the plugin declares no such hyperparameter."""

    CODE = 12


class BadHparamError(OptimdError):
    """13 BAD_HPARAM: wrong type, out of range, missing, or a cross-key rule broken."""

    CODE = 13


class NotMutableError(OptimdError):
    """14 NOT_MUTABLE: the hyperparameter cannot change while a session runs."""

    CODE = 14


class UnknownSessionError(OptimdError):
    """20 UNKNOWN_SESSION: no session has that name."""

    CODE = 20


class BadTokenError(OptimdError):
    """21 BAD_TOKEN: the token is missing or wrong."""

    CODE = 21


class SessionExistsError(OptimdError):
    """22 SESSION_EXISTS: ``open`` with a name already in use."""

    CODE = 22


class LimitError(OptimdError):
    """23 LIMIT: too many sessions or parameters."""

    CODE = 23


class UnknownWorkerError(OptimdError):
    """24 UNKNOWN_WORKER: a worker that has not joined the session (or left it
    while its push waited)."""

    CODE = 24


class WorkerTimeoutError(OptimdError):
    """25 TIMEOUT: a sync round, or a bounded worker's wait for the slowest,
    ran past the session's ``timeout_ms``; the push was not applied."""

    CODE = 25


class StepPendingError(OptimdError):
    """26 STEP_PENDING: the session has a sliced step that is not complete
    yet (another client's, or this one's under another ``seq``); the request
    changed nothing. Send it again once the step's last part is in
    (``Client.info`` shows the pending step as ``pending_step``)."""

    CODE = 26


class UnknownParamError(OptimdError):
    """30 UNKNOWN_PARAM: a parameter name that is not registered."""

    CODE = 30


class ParamExistsError(OptimdError):
    """31 PARAM_EXISTS: ``register`` with a name already in use."""

    CODE = 31


class BadTensorError(OptimdError):
    """32 BAD_TENSOR: dtype, shape or byte length wrong, or a malformed tensor map."""

    CODE = 32


class NonfiniteError(OptimdError):
    """33 NONFINITE: a gradient holds NaN or ±infinity."""

    CODE = 33


class PluginError(OptimdError):
    """40 PLUGIN: the plugin refused or failed; ``message`` carries its text."""

    CODE = 40


class InternalError(OptimdError):
    """50 INTERNAL: a daemon bug."""

    CODE = 50


class NoMemoryError(OptimdError):
    """51 NOMEM: the daemon could not allocate memory."""

    CODE = 51


class ShuttingDownError(OptimdError):
    """52 SHUTTING_DOWN: the daemon is stopping."""

    CODE = 52


class StorageError(OptimdError):
    """53 STORAGE: the daemon could not write its state directory."""

    CODE = 53


#: Protocol code -> exception class, one entry per code of docs/protocol.md §6.
ERROR_CLASSES: Final[dict[int, type[OptimdError]]] = {
    cls.CODE: cls
    for cls in (
        MalformedError,
        BadRequestError,
        UnknownOpError,
        VersionError,
        TooLargeError,
        UnknownPluginError,
        WrongKindError,
        UnknownHparamError,
        BadHparamError,
        NotMutableError,
        UnknownSessionError,
        BadTokenError,
        SessionExistsError,
        LimitError,
        UnknownWorkerError,
        WorkerTimeoutError,
        StepPendingError,
        UnknownParamError,
        ParamExistsError,
        BadTensorError,
        NonfiniteError,
        PluginError,
        InternalError,
        NoMemoryError,
        ShuttingDownError,
        StorageError,
    )
    if cls.CODE is not None
}


def error_from_reply(code: int, name: str, message: str, request_id: int = 0) -> OptimdError:
    """The exception for an error reply: the class of ``code``, or
    :class:`OptimdError` for a code this client does not know."""
    cls = ERROR_CLASSES.get(code, OptimdError)
    return cls(code, name, message, request_id)


class TransportError(Exception):
    """No valid reply: the daemon could not be reached, the connection failed,
    or the reply broke the protocol. Whether the request was applied is
    unknown."""


class RequestTimeout(TransportError, TimeoutError):
    """The request could not be sent, or its reply did not arrive, within the
    client's timeout."""


class ProtocolError(TransportError):
    """A reply that is not a valid protocol-1 reply to the request (wrong
    ``id``, a missing key, a tensor of the wrong size...)."""
