"""Python client for optimd, the optimizer parameter server.

>>> import numpy as np, optimd
>>> with optimd.Client("tcp://127.0.0.1:7878") as c:          # doctest: +SKIP
...     s = c.open("run1", "adam", {"lr": 0.01})
...     c.register(s, {"w": np.zeros(3, np.float32)})
...     c.step(s, {"w": np.ones(3, np.float32)}).params["w"]

``optimd.torch.RemoteOptimizer`` (imported separately, it needs torch) is a
``torch.optim.Optimizer`` whose updates run in the daemon.
"""

from .client import DEFAULT_URL, Client
from .cluster import Cluster, ClusterSession, ClusterStepResult, place
from .reshard import ReshardPlan
from . import errors as _errors
from .errors import (
    ERROR_CLASSES,
    BadHparamError,
    BadRequestError,
    BadTensorError,
    BadTokenError,
    InternalError,
    LimitError,
    MalformedError,
    NoMemoryError,
    NonfiniteError,
    NotMutableError,
    OptimdError,
    ParamExistsError,
    PluginError,
    ProtocolError,
    RequestTimeout,
    SessionExistsError,
    ShuttingDownError,
    StepPendingError,
    StorageError,
    TooLargeError,
    TransportError,
    UnknownHparamError,
    UnknownOpError,
    UnknownParamError,
    UnknownPluginError,
    UnknownSessionError,
    UnknownWorkerError,
    VersionError,
    WorkerTimeoutError,
    WrongKindError,
)
from .lr_range import LRRangeResult, lr_range_test
from .shared_memory import SharedMemory
from .messages import INHERIT, ClipNorm, Group, Request
from .results import (
    JoinResult,
    WorkerInfo,
    Workers,
    WorkersInfo,
    Array,
    GroupInfo,
    ImportResult,
    Lookahead,
    Schedule,
    ObserveResult,
    Hello,
    HparamDecl,
    Hparams,
    ParamInfo,
    PluginInfo,
    PluginLoad,
    Session,
    SessionInfo,
    SessionSummary,
    SlotDecl,
    SharedStepResult,
    PendingStep,
    StepPartResult,
    StepResult,
    SwitchResult,
)
from .wire import PROTOCOL_VERSION, HparamValue

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Cluster",
    "ClusterSession",
    "ClusterStepResult",
    "ReshardPlan",
    "place",
    "DEFAULT_URL",
    "lr_range_test",
    "LRRangeResult",
    "PROTOCOL_VERSION",
    "Session",
    "Group",
    "ClipNorm",
    "INHERIT",
    "Request",
    "GroupInfo",
    "Lookahead",
    "JoinResult",
    "WorkerInfo",
    "Workers",
    "WorkersInfo",
    "Schedule",
    "ObserveResult",
    "ImportResult",
    "Array",
    "HparamValue",
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
    "SharedStepResult",
    "SharedMemory",
    "SwitchResult",
    "PluginLoad",
    # Every exception class, as errors.py lists them (one list to keep).
    *(name for name in _errors.__all__ if name != "error_from_reply"),
]
