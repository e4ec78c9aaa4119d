package optimd

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// DType is a tensor's element type, named as on the wire.
type DType string

const (
	F32 DType = "f32" // IEEE-754 binary32
	F64 DType = "f64" // IEEE-754 binary64
)

// Size is the number of bytes one element takes, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case F64:
		return 8
	}
	return 0
}

// MaxDims is the most dimensions a tensor may have.
const MaxDims = 8

// Tensor is a dense array as the protocol carries it: the elements of Data
// are little-endian, in C (row-major) order. A Shape of length 0 is a
// scalar, one element.
type Tensor struct {
	DType DType
	Shape []uint64
	Data  []byte
}

// NumElements is the product of the shape (1 for a scalar). ok is false if
// the product does not fit in an int.
func NumElements(shape []uint64) (n int, ok bool) {
	n = 1
	for _, d := range shape {
		if d == 0 {
			return 0, true
		}
		if d > uint64(math.MaxInt)/uint64(n) {
			return 0, false
		}
		n *= int(d)
	}
	return n, true
}

// Validate reports whether t is well formed: a known dtype, at most MaxDims
// dimensions, and exactly as many bytes as the shape calls for.
func (t Tensor) Validate() error {
	size := t.DType.Size()
	if size == 0 {
		return fmt.Errorf("unknown dtype %q", string(t.DType))
	}
	if len(t.Shape) > MaxDims {
		return fmt.Errorf("%d dimensions, at most %d allowed", len(t.Shape), MaxDims)
	}
	n, ok := NumElements(t.Shape)
	if !ok || n > math.MaxInt/size {
		return fmt.Errorf("shape %v is too large", t.Shape)
	}
	if len(t.Data) != n*size {
		return fmt.Errorf("%d data bytes, shape %v of %s needs %d", len(t.Data), t.Shape, t.DType, n*size)
	}
	return nil
}

// Len is the number of elements Data holds.
func (t Tensor) Len() int {
	if s := t.DType.Size(); s > 0 {
		return len(t.Data) / s
	}
	return 0
}

// FromFloat32 makes an f32 tensor of the given shape; with no shape it is
// one-dimensional, of length len(values).
func FromFloat32(values []float32, shape ...uint64) Tensor {
	data := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	return Tensor{DType: F32, Shape: defaultShape(shape, len(values)), Data: data}
}

// FromFloat64 makes an f64 tensor of the given shape; with no shape it is
// one-dimensional, of length len(values).
func FromFloat64(values []float64, shape ...uint64) Tensor {
	data := make([]byte, 8*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint64(data[8*i:], math.Float64bits(v))
	}
	return Tensor{DType: F64, Shape: defaultShape(shape, len(values)), Data: data}
}

func defaultShape(shape []uint64, n int) []uint64 {
	if shape == nil {
		return []uint64{uint64(n)}
	}
	return append([]uint64(nil), shape...)
}

// Float32s returns the elements of an f32 tensor.
func (t Tensor) Float32s() ([]float32, error) {
	if t.DType != F32 {
		return nil, fmt.Errorf("tensor dtype is %s, not f32", t.DType)
	}
	if len(t.Data)%4 != 0 {
		return nil, fmt.Errorf("f32 data of %d bytes", len(t.Data))
	}
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// Float64s returns the elements of an f64 tensor, or of an f32 one
// widened (exactly) to float64.
func (t Tensor) Float64s() ([]float64, error) {
	switch t.DType {
	case F64:
		if len(t.Data)%8 != 0 {
			return nil, fmt.Errorf("f64 data of %d bytes", len(t.Data))
		}
		out := make([]float64, len(t.Data)/8)
		for i := range out {
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(t.Data[8*i:]))
		}
		return out, nil
	case F32:
		f, err := t.Float32s()
		if err != nil {
			return nil, err
		}
		out := make([]float64, len(f))
		for i, v := range f {
			out[i] = float64(v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown dtype %q", string(t.DType))
}

// padFrom is the size from which a tensor's data is aligned on the wire:
// the daemon receives a request into a 16-byte aligned buffer that holds
// REQ's 4-byte request ID and then the body, and reads data in place
// where 4 + its body offset is a multiple of 16, copying it first
// elsewhere (docs/protocol.md §3, pad). Smaller tensors are not worth the
// bytes.
const (
	padFrom   = 64 << 10
	padAlign  = 16
	reqHeader = 4
)

// wireTensor is a tensor as the protocol's map, encoded by EncodeMsgpack.
type wireTensor struct{ t Tensor }

// wire is the tensor as the protocol's map.
func (t Tensor) wire() wireTensor { return wireTensor{t} }

// offsetWriter is what encodeMap writes to: its length so far is the
// offset of the next byte in the message body.
type offsetWriter interface{ Len() int }

// EncodeMsgpack writes {data, dtype, shape} (sorted, as the other maps of a
// request) for a tensor under padFrom bytes, and {dtype, shape, pad, data}
// for a larger one, pad being the zeros that put data's first byte where
// the daemon can read it in place.
func (w wireTensor) EncodeMsgpack(enc *msgpack.Encoder) error {
	shape := w.t.Shape
	if shape == nil {
		shape = []uint64{}
	}
	data := w.t.Data
	if data == nil {
		data = []byte{}
	}
	dtype := string(w.t.DType)
	ow, known := enc.Writer().(offsetWriter)
	if len(data) < padFrom || uint64(len(data)) > math.MaxUint32 || !known {
		if err := enc.EncodeMapLen(3); err != nil {
			return err
		}
		return encodeEntries(enc, "data", data, "dtype", dtype, "shape", shape)
	}
	if err := enc.EncodeMapLen(4); err != nil {
		return err
	}
	if err := encodeEntries(enc, "dtype", dtype, "shape", shape); err != nil {
		return err
	}
	// "pad" (4 bytes), its bin8 header (2), k bytes, "data" (5) and the
	// bin32 header (5), then the data.
	at := ow.Len() + 4 + 2 + 5 + 5
	k := (padAlign - (reqHeader+at)%padAlign) % padAlign
	var zeros [padAlign]byte
	return encodeEntries(enc, "pad", zeros[:k], "data", data)
}

// encodeEntries writes map entries: key, value, key, value...
func encodeEntries(enc *msgpack.Encoder, kv ...any) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := enc.EncodeString(kv[i].(string)); err != nil {
			return err
		}
		if err := enc.Encode(kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// tensorFromWire checks a decoded tensor map strictly.
func tensorFromWire(v any) (Tensor, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return Tensor{}, fmt.Errorf("tensor is %s, not a map", typeName(v))
	}
	dt, err := getString(m, "dtype")
	if err != nil {
		return Tensor{}, err
	}
	rawShape, err := getArray(m, "shape")
	if err != nil {
		return Tensor{}, err
	}
	shape := make([]uint64, len(rawShape))
	for i, d := range rawShape {
		if shape[i], err = asUint("shape", d); err != nil {
			return Tensor{}, err
		}
	}
	data, err := getBin(m, "data")
	if err != nil {
		return Tensor{}, err
	}
	t := Tensor{DType: DType(dt), Shape: shape, Data: data}
	if err := t.Validate(); err != nil {
		return Tensor{}, err
	}
	return t, nil
}

func tensorMapToWire(params map[string]Tensor) map[string]any {
	m := make(map[string]any, len(params))
	for name, t := range params {
		m[name] = t.wire()
	}
	return m
}

func tensorMapFromWire(v any) (map[string]Tensor, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("is %s, not a map", typeName(v))
	}
	out := make(map[string]Tensor, len(m))
	for name, tv := range m {
		t, err := tensorFromWire(tv)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}
