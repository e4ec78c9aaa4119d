package optimd

import (
	"errors"
	"fmt"
	"math"
)

// ProtocolVersion is the version of docs/protocol.md this client speaks.
const ProtocolVersion = 1

// Request is one request before encoding: the op, the id the reply must
// echo, and the op's keys. The op builders (NewStepRequest and the like)
// make one; Client sends it. Building and encoding need no connection.
type Request struct {
	Op   string
	ID   uint64
	Args map[string]any
}

func newRequest(op string) *Request {
	return &Request{Op: op, Args: map[string]any{}}
}

// Encode is the request as one msgpack map: the envelope (v, id, op) and
// the op's keys.
func (r *Request) Encode() ([]byte, error) {
	m := make(map[string]any, len(r.Args)+3)
	for k, v := range r.Args {
		m[k] = v
	}
	m["v"] = ProtocolVersion
	m["id"] = r.ID
	m["op"] = r.Op
	return encodeMap(m)
}

// sessionRequest is a request on a session: it carries the name and token.
func sessionRequest(op string, s Session) *Request {
	r := newRequest(op)
	r.Args["session"] = s.Name
	r.Args["token"] = s.Token
	return r
}

// decodeReply checks a reply's envelope and returns its keys: a
// *ServerError for an error reply, a *ProtocolError for anything that is
// not a valid reply to request id.
func decodeReply(op string, id uint64, b []byte) (map[string]any, error) {
	perr := func(format string, args ...any) error {
		return &ProtocolError{Op: op, Reason: fmt.Sprintf(format, args...)}
	}
	m, err := decodeMessage(b)
	if err != nil {
		return nil, perr("%v", err)
	}
	v, err := getUint(m, "v")
	if err != nil {
		return nil, perr("%v", err)
	}
	if v != ProtocolVersion {
		return nil, perr("protocol version %d, expected %d", v, ProtocolVersion)
	}
	ok, err := getBool(m, "ok")
	if err != nil {
		return nil, perr("%v", err)
	}
	replyID, err := getUint(m, "id")
	if err != nil {
		return nil, perr("%v", err)
	}
	// An error about a request the daemon could not decode carries id 0.
	if replyID != id && (ok || replyID != 0) {
		return nil, perr("reply id %d, request id %d", replyID, id)
	}
	if ok {
		return m, nil
	}
	code, err := getInt(m, "code")
	if err != nil {
		return nil, perr("%v", err)
	}
	name, err := getString(m, "error")
	if err != nil {
		return nil, perr("%v", err)
	}
	message, err := getString(m, "message")
	if err != nil {
		return nil, perr("%v", err)
	}
	if code < math.MinInt32 || code > math.MaxInt32 {
		return nil, perr("error code %d out of range", code)
	}
	return nil, &ServerError{Op: op, Code: Code(code), Name: name, Message: message}
}

// parseReply decodes a reply and hands its keys to parse; errors from parse
// become protocol errors.
func parseReply[T any](op string, id uint64, b []byte, parse func(map[string]any) (T, error)) (T, error) {
	var zero T
	m, err := decodeReply(op, id, b)
	if err != nil {
		return zero, err
	}
	res, err := parse(m)
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			return zero, err
		}
		return zero, &ProtocolError{Op: op, Reason: err.Error()}
	}
	return res, nil
}

// Typed access to decoded maps. Every getter names the key in its error.

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "nil"
	case bool:
		return "bool"
	case int64, uint64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bin"
	case []any:
		return "array"
	case map[string]any:
		return "map"
	}
	return fmt.Sprintf("%T", v)
}

func wrongType(key string, v any, want string) error {
	return fmt.Errorf("key %q is %s, not %s", key, typeName(v), want)
}

func get(m map[string]any, key string) (any, error) {
	v, ok := m[key]
	if !ok {
		return nil, fmt.Errorf("key %q missing", key)
	}
	return v, nil
}

func getString(m map[string]any, key string) (string, error) {
	v, err := get(m, key)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", wrongType(key, v, "str")
	}
	return s, nil
}

// getOptString accepts a str or nil (returned as "").
func getOptString(m map[string]any, key string) (string, error) {
	v, err := get(m, key)
	if err != nil {
		return "", err
	}
	switch s := v.(type) {
	case nil:
		return "", nil
	case string:
		return s, nil
	}
	return "", wrongType(key, v, "str or nil")
}

func getBool(m map[string]any, key string) (bool, error) {
	v, err := get(m, key)
	if err != nil {
		return false, err
	}
	b, ok := v.(bool)
	if !ok {
		return false, wrongType(key, v, "bool")
	}
	return b, nil
}

func asUint(key string, v any) (uint64, error) {
	switch n := v.(type) {
	case int64:
		if n >= 0 {
			return uint64(n), nil
		}
		return 0, fmt.Errorf("key %q is negative (%d)", key, n)
	case uint64:
		return n, nil
	}
	return 0, wrongType(key, v, "uint")
}

func getUint(m map[string]any, key string) (uint64, error) {
	v, err := get(m, key)
	if err != nil {
		return 0, err
	}
	return asUint(key, v)
}

func getInt(m map[string]any, key string) (int64, error) {
	v, err := get(m, key)
	if err != nil {
		return 0, err
	}
	n, ok := v.(int64)
	if !ok {
		return 0, wrongType(key, v, "int")
	}
	return n, nil
}

// asFloat accepts a float or, as the protocol allows, an int.
func asFloat(key string, v any) (float64, error) {
	switch f := v.(type) {
	case float64:
		return f, nil
	case int64:
		return float64(f), nil
	case uint64:
		return float64(f), nil
	}
	return 0, wrongType(key, v, "float")
}

func getFloat(m map[string]any, key string) (float64, error) {
	v, err := get(m, key)
	if err != nil {
		return 0, err
	}
	return asFloat(key, v)
}

func getBin(m map[string]any, key string) ([]byte, error) {
	v, err := get(m, key)
	if err != nil {
		return nil, err
	}
	b, ok := v.([]byte)
	if !ok {
		return nil, wrongType(key, v, "bin")
	}
	return b, nil
}

func getArray(m map[string]any, key string) ([]any, error) {
	v, err := get(m, key)
	if err != nil {
		return nil, err
	}
	a, ok := v.([]any)
	if !ok {
		return nil, wrongType(key, v, "array")
	}
	return a, nil
}

func getMap(m map[string]any, key string) (map[string]any, error) {
	v, err := get(m, key)
	if err != nil {
		return nil, err
	}
	mm, ok := v.(map[string]any)
	if !ok {
		return nil, wrongType(key, v, "map")
	}
	return mm, nil
}

func getStrings(m map[string]any, key string) ([]string, error) {
	a, err := getArray(m, key)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(a))
	for i, v := range a {
		s, ok := v.(string)
		if !ok {
			return nil, wrongType(fmt.Sprintf("%s[%d]", key, i), v, "str")
		}
		out[i] = s
	}
	return out, nil
}

// getHparams reads a hyperparameter map: values are bool, int64 or float64.
func getHparams(m map[string]any, key string) (Hparams, error) {
	raw, err := getMap(m, key)
	if err != nil {
		return nil, err
	}
	out := make(Hparams, len(raw))
	for k, v := range raw {
		switch x := v.(type) {
		case bool, int64, float64:
			out[k] = x
		default:
			return nil, wrongType(key+"."+k, v, "bool, int or float")
		}
	}
	return out, nil
}
