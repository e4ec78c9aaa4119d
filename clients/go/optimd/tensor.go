package optimd

import (
	"encoding/binary"
	"fmt"
	"math"
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

// wire is the tensor as the protocol's map.
func (t Tensor) wire() map[string]any {
	shape := t.Shape
	if shape == nil {
		shape = []uint64{}
	}
	data := t.Data
	if data == nil {
		data = []byte{}
	}
	return map[string]any{"dtype": string(t.DType), "shape": shape, "data": data}
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
