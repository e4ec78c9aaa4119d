//! Errors: what the daemon refused, what it sent that makes no sense, and
//! what went wrong on the way there.

use std::fmt;
use std::io;

/// The stable error codes of docs/protocol.md §6. The numbers are part of the
/// protocol; match on these rather than on the `name` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(i32)]
pub enum ErrorCode {
    Malformed = 1,
    BadRequest = 2,
    UnknownOp = 3,
    Version = 4,
    TooLarge = 5,
    UnknownPlugin = 10,
    WrongKind = 11,
    UnknownHparam = 12,
    BadHparam = 13,
    NotMutable = 14,
    UnknownSession = 20,
    BadToken = 21,
    SessionExists = 22,
    Limit = 23,
    UnknownWorker = 24,
    Timeout = 25,
    StepPending = 26,
    UnknownParam = 30,
    ParamExists = 31,
    BadTensor = 32,
    Nonfinite = 33,
    Plugin = 40,
    Internal = 50,
    Nomem = 51,
    ShuttingDown = 52,
    Storage = 53,
}

const CODES: [(ErrorCode, &str); 26] = [
    (ErrorCode::Malformed, "MALFORMED"),
    (ErrorCode::BadRequest, "BAD_REQUEST"),
    (ErrorCode::UnknownOp, "UNKNOWN_OP"),
    (ErrorCode::Version, "VERSION"),
    (ErrorCode::TooLarge, "TOO_LARGE"),
    (ErrorCode::UnknownPlugin, "UNKNOWN_PLUGIN"),
    (ErrorCode::WrongKind, "WRONG_KIND"),
    (ErrorCode::UnknownHparam, "UNKNOWN_HPARAM"),
    (ErrorCode::BadHparam, "BAD_HPARAM"),
    (ErrorCode::NotMutable, "NOT_MUTABLE"),
    (ErrorCode::UnknownSession, "UNKNOWN_SESSION"),
    (ErrorCode::BadToken, "BAD_TOKEN"),
    (ErrorCode::SessionExists, "SESSION_EXISTS"),
    (ErrorCode::Limit, "LIMIT"),
    (ErrorCode::UnknownWorker, "UNKNOWN_WORKER"),
    (ErrorCode::Timeout, "TIMEOUT"),
    (ErrorCode::StepPending, "STEP_PENDING"),
    (ErrorCode::UnknownParam, "UNKNOWN_PARAM"),
    (ErrorCode::ParamExists, "PARAM_EXISTS"),
    (ErrorCode::BadTensor, "BAD_TENSOR"),
    (ErrorCode::Nonfinite, "NONFINITE"),
    (ErrorCode::Plugin, "PLUGIN"),
    (ErrorCode::Internal, "INTERNAL"),
    (ErrorCode::Nomem, "NOMEM"),
    (ErrorCode::ShuttingDown, "SHUTTING_DOWN"),
    (ErrorCode::Storage, "STORAGE"),
];

impl ErrorCode {
    /// The code for a number, or None for one the protocol does not define
    /// (a newer daemon may send codes this client does not know).
    pub fn from_code(code: i64) -> Option<ErrorCode> {
        CODES.iter().find(|(c, _)| *c as i64 == code).map(|(c, _)| *c)
    }

    /// The number sent on the wire.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The name sent in an error reply's `error` key ("BAD_TOKEN").
    pub fn name(self) -> &'static str {
        CODES.iter().find(|(c, _)| *c == self).map(|(_, n)| *n).unwrap_or("")
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a call can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered with an error reply. `code` is kept as sent so
    /// that codes unknown to this client still reach the caller; see
    /// [`Error::code`].
    Server { code: i64, name: String, message: String },
    /// The reply could not be understood: not msgpack, not a map, wrong id,
    /// a key missing or of the wrong type, a tensor whose bytes do not match
    /// its shape, a bad SP frame. The connection is dropped when this
    /// happens, because what follows on it can no longer be trusted.
    Protocol(String),
    /// Connecting, sending or receiving failed, or the call ran past its
    /// timeout (`io::ErrorKind::TimedOut`).
    Transport(io::Error),
    /// The caller's arguments cannot make a valid request (a tensor whose
    /// data does not match its shape, an unsupported URL); nothing was sent.
    Invalid(String),
}

impl Error {
    /// The stable code of a server error; None for other errors and for
    /// codes this client does not know.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => ErrorCode::from_code(*code),
            _ => None,
        }
    }

    /// Whether the call ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Transport(e) if e.kind() == io::ErrorKind::TimedOut)
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        Error::Protocol(msg.into())
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Server { code, name, message } => {
                write!(f, "optimd error {name} ({code}): {message}")
            }
            Error::Protocol(m) => write!(f, "optimd protocol error: {m}"),
            Error::Transport(e) => write!(f, "optimd transport error: {e}"),
            Error::Invalid(m) => write!(f, "invalid request: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Transport(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
