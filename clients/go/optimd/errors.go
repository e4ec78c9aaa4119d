package optimd

import (
	"errors"
	"fmt"
)

// Code is an error code from docs/protocol.md §6. The codes and their names
// are stable; an error's message is not.
type Code int

const (
	CodeMalformed      Code = 1
	CodeBadRequest     Code = 2
	CodeUnknownOp      Code = 3
	CodeVersion        Code = 4
	CodeTooLarge       Code = 5
	CodeUnknownPlugin  Code = 10
	CodeWrongKind      Code = 11
	CodeUnknownHparam  Code = 12
	CodeBadHparam      Code = 13
	CodeNotMutable     Code = 14
	CodeUnknownSession Code = 20
	CodeBadToken       Code = 21
	CodeSessionExists  Code = 22
	CodeLimit          Code = 23
	CodeUnknownWorker  Code = 24
	CodeTimeout        Code = 25
	CodeStepPending    Code = 26
	CodeUnknownParam   Code = 30
	CodeParamExists    Code = 31
	CodeBadTensor      Code = 32
	CodeNonfinite      Code = 33
	CodePlugin         Code = 40
	CodeInternal       Code = 50
	CodeNoMem          Code = 51
	CodeShuttingDown   Code = 52
	CodeStorage        Code = 53
)

var codeNames = map[Code]string{
	CodeMalformed:      "MALFORMED",
	CodeBadRequest:     "BAD_REQUEST",
	CodeUnknownOp:      "UNKNOWN_OP",
	CodeVersion:        "VERSION",
	CodeTooLarge:       "TOO_LARGE",
	CodeUnknownPlugin:  "UNKNOWN_PLUGIN",
	CodeWrongKind:      "WRONG_KIND",
	CodeUnknownHparam:  "UNKNOWN_HPARAM",
	CodeBadHparam:      "BAD_HPARAM",
	CodeNotMutable:     "NOT_MUTABLE",
	CodeUnknownSession: "UNKNOWN_SESSION",
	CodeBadToken:       "BAD_TOKEN",
	CodeSessionExists:  "SESSION_EXISTS",
	CodeLimit:          "LIMIT",
	CodeUnknownWorker:  "UNKNOWN_WORKER",
	CodeTimeout:        "TIMEOUT",
	CodeStepPending:    "STEP_PENDING",
	CodeUnknownParam:   "UNKNOWN_PARAM",
	CodeParamExists:    "PARAM_EXISTS",
	CodeBadTensor:      "BAD_TENSOR",
	CodeNonfinite:      "NONFINITE",
	CodePlugin:         "PLUGIN",
	CodeInternal:       "INTERNAL",
	CodeNoMem:          "NOMEM",
	CodeShuttingDown:   "SHUTTING_DOWN",
	CodeStorage:        "STORAGE",
}

// String is the code's name in the protocol (e.g. "BAD_TOKEN"), or
// "CODE_<n>" for a code this client does not know.
func (c Code) String() string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", int(c))
}

// ServerError is an error reply from the daemon: the request was decoded
// and refused, and changed nothing.
type ServerError struct {
	Op      string // the request's op
	Code    Code   // §6 of the protocol
	Name    string // the name the daemon gave for Code
	Message string // human-readable; not stable
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("optimd: %s: %s (%d): %s", e.Op, e.Name, int(e.Code), e.Message)
}

// Is makes errors.Is(err, ErrBadToken) and the like match a ServerError by
// code.
func (e *ServerError) Is(target error) bool {
	if c, ok := target.(codeError); ok {
		return e.Code == c.code
	}
	return false
}

// codeError is the type of the Err* sentinels: a code alone, so that no one
// can change a sentinel through a pointer.
type codeError struct{ code Code }

func (c codeError) Error() string { return "optimd: " + c.code.String() }

// Sentinels for errors.Is, one per stable code. A *ServerError matches the
// sentinel of its code; use errors.As to get its message.
var (
	ErrMalformed      error = codeError{CodeMalformed}
	ErrBadRequest     error = codeError{CodeBadRequest}
	ErrUnknownOp      error = codeError{CodeUnknownOp}
	ErrVersion        error = codeError{CodeVersion}
	ErrTooLarge       error = codeError{CodeTooLarge}
	ErrUnknownPlugin  error = codeError{CodeUnknownPlugin}
	ErrWrongKind      error = codeError{CodeWrongKind}
	ErrUnknownHparam  error = codeError{CodeUnknownHparam}
	ErrBadHparam      error = codeError{CodeBadHparam}
	ErrNotMutable     error = codeError{CodeNotMutable}
	ErrUnknownSession error = codeError{CodeUnknownSession}
	ErrBadToken       error = codeError{CodeBadToken}
	ErrSessionExists  error = codeError{CodeSessionExists}
	ErrLimit          error = codeError{CodeLimit}
	ErrUnknownWorker  error = codeError{CodeUnknownWorker}
	ErrTimeout        error = codeError{CodeTimeout}
	ErrStepPending    error = codeError{CodeStepPending}
	ErrUnknownParam   error = codeError{CodeUnknownParam}
	ErrParamExists    error = codeError{CodeParamExists}
	ErrBadTensor      error = codeError{CodeBadTensor}
	ErrNonfinite      error = codeError{CodeNonfinite}
	ErrPlugin         error = codeError{CodePlugin}
	ErrInternal       error = codeError{CodeInternal}
	ErrNoMem          error = codeError{CodeNoMem}
	ErrShuttingDown   error = codeError{CodeShuttingDown}
	ErrStorage        error = codeError{CodeStorage}
)

// ErrProtocol matches every *ProtocolError (errors.Is).
var ErrProtocol = errors.New("optimd: protocol error")

// ProtocolError is a reply this client cannot accept: not msgpack, not a
// map, a wrong version or request id, a missing key or one of the wrong
// type, a tensor whose bytes do not match its shape. It means the peer is
// not a compatible optimd daemon (or a bug in one), not that the request
// was refused.
type ProtocolError struct {
	Op     string
	Reason string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("optimd: %s: bad reply: %s", e.Op, e.Reason)
}

func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }
