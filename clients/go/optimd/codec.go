package optimd

import (
	"bytes"
	"errors"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// maxDepth bounds the nesting of a decoded message. The deepest reply the
// protocol defines (plugins -> hparams -> declaration) is a handful of
// levels; a limit keeps a hostile peer from exhausting the stack.
const maxDepth = 32

// encodeMap encodes m as one msgpack map. Keys are sorted so that the same
// request always has the same bytes, and integers take their shortest form.
// It writes into one bytes.Buffer from the message's first byte, so a
// tensor's EncodeMsgpack finds its body offset in the buffer's length.
func encodeMap(m map[string]any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	enc.UseCompactInts(true)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodeMessage decodes one message body into plain Go values: a map with
// string keys whose values are map[string]any, []any, string, []byte
// (msgpack bin), bool, nil, int64 (uint64 only above MaxInt64) or float64
// (float32 widened, which is exact). It is stricter than msgpack.Unmarshal:
// str and bin stay distinct, map keys must be str, ext types are refused,
// lengths are checked against the bytes present before anything is
// allocated, nesting is bounded, and nothing may follow the value.
func decodeMessage(b []byte) (map[string]any, error) {
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	code, err := d.PeekCode()
	if err != nil {
		return nil, errors.New("empty message")
	}
	if !isMap(code) {
		return nil, fmt.Errorf("message is not a map (msgpack code 0x%02x)", code)
	}
	v, err := decodeValue(d, r, 0)
	if err != nil {
		return nil, err
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%d bytes follow the message", r.Len())
	}
	return v.(map[string]any), nil
}

func isMap(c byte) bool {
	return msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32
}

func isArray(c byte) bool {
	return msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32
}

// decodeValue reads one value. r is the reader under d: with a
// *bytes.Reader the decoder reads straight from it, so r.Len() is what is
// left of the message.
func decodeValue(d *msgpack.Decoder, r *bytes.Reader, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested deeper than %d levels", maxDepth)
	}
	c, err := d.PeekCode()
	if err != nil {
		return nil, errors.New("truncated message")
	}
	switch {
	case isMap(c):
		n, err := d.DecodeMapLen()
		if err != nil {
			return nil, err
		}
		// Each entry takes at least two bytes.
		if n < 0 || n > r.Len()/2 {
			return nil, errors.New("map longer than the message")
		}
		m := make(map[string]any, n)
		for i := 0; i < n; i++ {
			kc, err := d.PeekCode()
			if err != nil {
				return nil, errors.New("truncated message")
			}
			if !msgpcode.IsString(kc) {
				return nil, fmt.Errorf("map key is not a string (msgpack code 0x%02x)", kc)
			}
			k, err := decodeRaw(d, r)
			if err != nil {
				return nil, err
			}
			v, err := decodeValue(d, r, depth+1)
			if err != nil {
				return nil, err
			}
			m[string(k)] = v
		}
		return m, nil
	case isArray(c):
		n, err := d.DecodeArrayLen()
		if err != nil {
			return nil, err
		}
		if n < 0 || n > r.Len() {
			return nil, errors.New("array longer than the message")
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = decodeValue(d, r, depth+1); err != nil {
				return nil, err
			}
		}
		return a, nil
	case msgpcode.IsString(c):
		s, err := decodeRaw(d, r)
		return string(s), err
	case msgpcode.IsBin(c):
		return decodeRaw(d, r)
	case c == msgpcode.Nil:
		return nil, d.DecodeNil()
	case c == msgpcode.True || c == msgpcode.False:
		return d.DecodeBool()
	case c == msgpcode.Float || c == msgpcode.Double:
		return d.DecodeFloat64()
	case c == msgpcode.Uint64:
		u, err := d.DecodeUint64()
		if err == nil && u <= math.MaxInt64 {
			return int64(u), nil
		}
		return u, err
	case msgpcode.IsFixedNum(c) || (c >= msgpcode.Uint8 && c <= msgpcode.Int64):
		return d.DecodeInt64()
	default:
		return nil, fmt.Errorf("unsupported msgpack type (code 0x%02x)", c)
	}
}

// decodeRaw reads a str or bin body, checking its length against what is
// left before allocating it.
func decodeRaw(d *msgpack.Decoder, r *bytes.Reader) ([]byte, error) {
	n, err := d.DecodeBytesLen()
	if err != nil {
		return nil, err
	}
	if n < 0 || n > r.Len() {
		return nil, errors.New("string or bin longer than the message")
	}
	b := make([]byte, n)
	if err := d.ReadFull(b); err != nil {
		return nil, err
	}
	return b, nil
}
