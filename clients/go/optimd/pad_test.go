package optimd

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// padSize is the protocol page's threshold, written out here so that the
// tests pin it: tensor data of 64 KiB or more is padded.
const padSize = 65536

// wireEntry is one tensor of an encoded request as its bytes lie: its
// keys in order, where its data starts in the body, and its pad.
type wireEntry struct {
	keys       []string
	dataOffset int
	dataLen    int
	pad        []byte
	padCode    byte
}

// tensorLayout walks an encoded request and returns, for each tensor of
// its "grads" (or "params") map, where its bytes lie.
func tensorLayout(b []byte, field string) (map[string]wireEntry, error) {
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	at := func() int { return len(b) - r.Len() }
	n, err := d.DecodeMapLen()
	if err != nil {
		return nil, err
	}
	out := map[string]wireEntry{}
	for i := 0; i < n; i++ {
		k, err := d.DecodeString()
		if err != nil {
			return nil, err
		}
		if k != field {
			if err := d.Skip(); err != nil {
				return nil, err
			}
			continue
		}
		nt, err := d.DecodeMapLen()
		if err != nil {
			return nil, err
		}
		for j := 0; j < nt; j++ {
			name, err := d.DecodeString()
			if err != nil {
				return nil, err
			}
			nk, err := d.DecodeMapLen()
			if err != nil {
				return nil, err
			}
			var e wireEntry
			for m := 0; m < nk; m++ {
				key, err := d.DecodeString()
				if err != nil {
					return nil, err
				}
				e.keys = append(e.keys, key)
				switch key {
				case "data", "pad":
					code := b[at()]
					ln, err := d.DecodeBytesLen()
					if err != nil {
						return nil, err
					}
					off := at()
					if off+ln > len(b) {
						return nil, fmt.Errorf("%s.%s runs past the message", name, key)
					}
					if key == "data" {
						e.dataOffset, e.dataLen = off, ln
					} else {
						e.pad, e.padCode = b[off:off+ln], code
					}
					// The decoder reads straight from r.
					if _, err := r.Seek(int64(ln), io.SeekCurrent); err != nil {
						return nil, err
					}
				default:
					if err := d.Skip(); err != nil {
						return nil, err
					}
				}
			}
			out[name] = e
		}
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%d bytes after the message", r.Len())
	}
	return out, nil
}

// unpaddedEncoding is the request as this client encoded it before large
// tensors were padded: every tensor a plain sorted {data, dtype, shape}.
func unpaddedEncoding(t *testing.T, r *Request, field string) []byte {
	t.Helper()
	m := make(map[string]any, len(r.Args)+3)
	for k, v := range r.Args {
		m[k] = v
	}
	plain := map[string]any{}
	for name, v := range r.Args[field].(map[string]any) {
		w := v.(wireTensor).t
		shape := w.Shape
		if shape == nil {
			shape = []uint64{}
		}
		data := w.Data
		if data == nil {
			data = []byte{}
		}
		plain[name] = map[string]any{"dtype": string(w.DType), "shape": shape, "data": data}
	}
	m[field] = plain
	m["v"] = ProtocolVersion
	m["id"] = r.ID
	m["op"] = r.Op
	b, err := encodeMap(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// filled is a tensor of n elements whose bytes are not all alike.
func filled(dtype DType, n int, seed byte) Tensor {
	data := make([]byte, n*dtype.Size())
	for i := range data {
		data[i] = byte(i*7) + seed
	}
	return Tensor{DType: dtype, Shape: []uint64{uint64(n)}, Data: data}
}

// checkPadded encodes grads in a step request once per client id length 1
// to 16 (so that every pad length comes up) and checks the layout: each
// tensor of padSize bytes or more has {dtype, shape, pad, data} with data
// where 4 + its offset is a multiple of 16, a pad of at most 15 zeros in
// bin8; each smaller one is {data, dtype, shape} as before; and the
// message decodes as the unpadded one but for the pad keys. It returns the
// pad lengths seen.
func checkPadded(t *testing.T, grads map[string]Tensor) map[int]bool {
	t.Helper()
	seen := map[int]bool{}
	for n := 1; n <= 16; n++ {
		r := NewStepRequest(Session{Name: "s", Token: strings.Repeat("ab", 16)}, grads,
			&StepOptions{Client: strings.Repeat("c", n), Seq: 3})
		r.ID = 1 << 40
		got, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		layout, err := tensorLayout(got, "grads")
		if err != nil {
			t.Fatalf("client of %d: %v", n, err)
		}
		if len(layout) != len(grads) {
			t.Fatalf("client of %d: %d tensors on the wire, %d given", n, len(layout), len(grads))
		}
		for name, g := range grads {
			e := layout[name]
			if e.dataLen != len(g.Data) || !bytes.Equal(got[e.dataOffset:e.dataOffset+e.dataLen], g.Data) {
				t.Fatalf("client of %d: %s: data is not the tensor's bytes", n, name)
			}
			if len(g.Data) < padSize {
				if !reflect.DeepEqual(e.keys, []string{"data", "dtype", "shape"}) {
					t.Errorf("client of %d: small %s has keys %v", n, name, e.keys)
				}
				continue
			}
			if !reflect.DeepEqual(e.keys, []string{"dtype", "shape", "pad", "data"}) {
				t.Errorf("client of %d: large %s has keys %v", n, name, e.keys)
			}
			if (4+e.dataOffset)%16 != 0 {
				t.Errorf("client of %d: %s: data at body offset %d: 4 + %d is not a multiple of 16",
					n, name, e.dataOffset, e.dataOffset)
			}
			if e.padCode != 0xc4 || len(e.pad) > 15 || !bytes.Equal(e.pad, make([]byte, len(e.pad))) {
				t.Errorf("client of %d: %s: pad % x (code 0x%02x)", n, name, e.pad, e.padCode)
			}
			if got[e.dataOffset-5] != 0xc6 {
				t.Errorf("client of %d: %s: data header 0x%02x, not bin32", n, name, got[e.dataOffset-5])
			}
			seen[len(e.pad)] = true
		}

		// Decoded, it is the unpadded message with pad keys added.
		gm, err := decodeMessage(got)
		if err != nil {
			t.Fatal(err)
		}
		wm, err := decodeMessage(unpaddedEncoding(t, r, "grads"))
		if err != nil {
			t.Fatal(err)
		}
		for name, tv := range gm["grads"].(map[string]any) {
			tm := tv.(map[string]any)
			pad, has := tm["pad"]
			if has != (len(grads[name].Data) >= padSize) {
				t.Errorf("client of %d: %s (%d bytes): pad key present %v", n, name, len(grads[name].Data), has)
			}
			if has && !bytes.Equal(pad.([]byte), make([]byte, len(pad.([]byte)))) {
				t.Errorf("client of %d: %s: decoded pad % x", n, name, pad)
			}
			delete(tm, "pad")
		}
		if !reflect.DeepEqual(gm, wm) {
			t.Fatalf("client of %d: the padded request decodes differently from the unpadded one", n)
		}
	}
	return seen
}

func allPadLengths(t *testing.T, seen map[int]bool) {
	t.Helper()
	for k := 0; k < 16; k++ {
		if !seen[k] {
			t.Errorf("no tensor got a pad of %d bytes (seen %v)", k, seen)
		}
	}
}

// TestPadOneLargeTensor: one tensor of exactly padSize bytes, at every
// offset.
func TestPadOneLargeTensor(t *testing.T) {
	allPadLengths(t, checkPadded(t, map[string]Tensor{"w": filled(F32, padSize/4, 1)}))
}

// TestPadLargeAndSmallTensors: large tensors of several sizes (each one
// shifting the next) beside small ones, the largest just under padSize.
func TestPadLargeAndSmallTensors(t *testing.T) {
	grads := map[string]Tensor{
		"a.big":    filled(F32, padSize/4+1, 2),
		"b.small":  filled(F32, 3, 3),
		"c.big64":  filled(F64, 12345, 4),
		"d.under":  filled(F32, padSize/4-1, 5),
		"e.scalar": {DType: F64, Shape: []uint64{}, Data: make([]byte, 8)},
		"f.big":    {DType: F32, Shape: []uint64{7, 3001}, Data: filled(F32, 7*3001, 6).Data},
		"g.empty":  {DType: F32, Shape: []uint64{0}},
	}
	allPadLengths(t, checkPadded(t, grads))
}

// A request without a large tensor has the bytes it had before padding.
func TestPadSmallTensorsUnchanged(t *testing.T) {
	small := map[string]Tensor{"w": filled(F32, 10, 1), "v": filled(F64, padSize/8-1, 2),
		"s": {DType: F32, Data: make([]byte, 4)}}
	for _, r := range []*Request{
		NewStepRequest(Session{Name: "s", Token: "t"}, small, &StepOptions{Client: "me"}),
		NewRegisterRequest(Session{Name: "s", Token: "t"}, small),
	} {
		field := "grads"
		if r.Op == "register" {
			field = "params"
		}
		got, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if want := unpaddedEncoding(t, r, field); !bytes.Equal(got, want) {
			t.Errorf("%s: bytes changed\n got % x\nwant % x", r.Op, got, want)
		}
	}
}

// Register pads its large tensors too.
func TestPadRegister(t *testing.T) {
	r := NewRegisterRequest(Session{Name: "s", Token: "t"}, map[string]Tensor{"w": filled(F64, padSize, 1)})
	got, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	layout, err := tensorLayout(got, "params")
	if err != nil {
		t.Fatal(err)
	}
	if e := layout["w"]; len(e.keys) != 4 || (4+e.dataOffset)%16 != 0 {
		t.Errorf("register: %+v", e)
	}
}
