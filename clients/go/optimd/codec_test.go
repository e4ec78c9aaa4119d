package optimd

import (
	"bytes"
	"strings"
	"testing"
)

// The decoder's limits that no reply vector reaches through a parser.
func TestDecodeMessageLimits(t *testing.T) {
	prefix := []byte{0x81, 0xa1, 'x'} // {"x": ...}
	cases := map[string][]byte{
		"nested too deep":     append(append(append([]byte{}, prefix...), bytes.Repeat([]byte{0x91}, maxDepth+1)...), 0xc0),
		"array count too big": append(append([]byte{}, prefix...), 0xdd, 0xff, 0xff, 0xff, 0xff),
		"map count too big":   append(append([]byte{}, prefix...), 0xdf, 0x7f, 0xff, 0xff, 0xff),
		"bin longer than msg": append(append([]byte{}, prefix...), 0xc6, 0x7f, 0xff, 0xff, 0xff, 0x00),
		"int key":             {0x81, 0x01, 0xc0},
		"bin key":             {0x81, 0xc4, 0x01, 'x', 0xc0},
		"ext value":           append(append([]byte{}, prefix...), 0xd4, 0x01, 0x00),
		"empty":               {},
	}
	for name, b := range cases {
		if _, err := decodeMessage(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	ok := append(append(append([]byte{}, prefix...), bytes.Repeat([]byte{0x91}, maxDepth-1)...), 0xc0)
	if _, err := decodeMessage(ok); err != nil {
		t.Errorf("nesting within the limit: %v", err)
	}
}

// Values keep their msgpack kinds: str and bin apart, integers as int64
// (uint64 only above MaxInt64), float32 widened.
func TestDecodeMessageKinds(t *testing.T) {
	b, err := encodeMap(map[string]any{"s": "a", "b": []byte("a"), "i": int8(-3), "u": uint64(1) << 63,
		"f": float32(0.5), "n": nil, "t": true, "a": []any{uint16(7)}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"s": "str", "b": "bin", "i": "int", "u": "int", "f": "float", "n": "nil", "t": "bool", "a": "array"}
	for k, kind := range want {
		if got := typeName(m[k]); got != kind {
			t.Errorf("%s decoded as %s, want %s", k, got, kind)
		}
	}
	if m["i"] != int64(-3) || m["u"] != uint64(1)<<63 || m["f"] != 0.5 || m["a"].([]any)[0] != int64(7) {
		t.Errorf("values: %#v", m)
	}
	if err := (Tensor{DType: F32, Shape: []uint64{2}, Data: make([]byte, 7)}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "needs 8") {
		t.Errorf("a 7-byte f32[2] tensor validated: %v", err)
	}
}
