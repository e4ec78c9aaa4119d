//! Tensors as the protocol carries them: a dtype, a shape and little-endian
//! bytes in row-major order.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }

    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "f32" => Some(Dtype::F32),
            "f64" => Some(Dtype::F64),
            _ => None,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// The byte length a tensor of this dtype and shape must have; None when it
/// does not fit in memory's address range.
pub fn byte_len(dtype: Dtype, shape: &[u64]) -> Option<usize> {
    let mut n: usize = dtype.size();
    for &d in shape {
        n = n.checked_mul(usize::try_from(d).ok()?)?;
    }
    Some(n)
}

/// A tensor that owns its bytes: what replies carry.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    dtype: Dtype,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl Tensor {
    /// From raw little-endian bytes; the length must match dtype and shape.
    pub fn from_bytes(dtype: Dtype, shape: Vec<u64>, data: Vec<u8>) -> Result<Tensor> {
        check_len(dtype, &shape, data.len())?;
        Ok(Tensor { dtype, shape, data })
    }

    pub fn from_f32(shape: &[u64], values: &[f32]) -> Result<Tensor> {
        TensorRef::f32(shape, values).map(|t| t.to_owned())
    }

    pub fn from_f64(shape: &[u64], values: &[f64]) -> Result<Tensor> {
        TensorRef::f64(shape, values).map(|t| t.to_owned())
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The little-endian element bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// Number of elements (1 for a scalar, shape `[]`).
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// The elements as f32; an error if the dtype is f64 (no silent
    /// narrowing).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if self.dtype != Dtype::F32 {
            return Err(Error::invalid("tensor is f64, not f32"));
        }
        Ok(self
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The elements as f64; an error if the dtype is f32.
    pub fn to_f64(&self) -> Result<Vec<f64>> {
        if self.dtype != Dtype::F64 {
            return Err(Error::invalid("tensor is f32, not f64"));
        }
        Ok(self
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
            .collect())
    }

    /// A borrowed view, to send this tensor back without copying it.
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef { dtype: self.dtype, shape: Cow::Borrowed(&self.shape), data: Cow::Borrowed(&self.data) }
    }
}

/// A tensor that borrows its elements from the caller: what requests carry.
/// On little-endian machines the caller's `&[f32]` goes to the socket as is,
/// with no copy; big-endian machines convert once.
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    dtype: Dtype,
    shape: Cow<'a, [u64]>,
    data: Cow<'a, [u8]>,
}

impl<'a> TensorRef<'a> {
    /// From little-endian bytes; the length must match dtype and shape.
    pub fn from_bytes(dtype: Dtype, shape: &'a [u64], data: &'a [u8]) -> Result<TensorRef<'a>> {
        check_len(dtype, shape, data.len())?;
        Ok(TensorRef { dtype, shape: Cow::Borrowed(shape), data: Cow::Borrowed(data) })
    }

    pub fn f32(shape: &'a [u64], values: &'a [f32]) -> Result<TensorRef<'a>> {
        check_len(Dtype::F32, shape, std::mem::size_of_val(values))?;
        Ok(TensorRef { dtype: Dtype::F32, shape: Cow::Borrowed(shape), data: f32_bytes(values) })
    }

    pub fn f64(shape: &'a [u64], values: &'a [f64]) -> Result<TensorRef<'a>> {
        check_len(Dtype::F64, shape, std::mem::size_of_val(values))?;
        Ok(TensorRef { dtype: Dtype::F64, shape: Cow::Borrowed(shape), data: f64_bytes(values) })
    }

    /// A 1-D f32 tensor over the whole slice.
    pub fn vec_f32(values: &'a [f32]) -> TensorRef<'a> {
        TensorRef { dtype: Dtype::F32, shape: Cow::Owned(vec![values.len() as u64]), data: f32_bytes(values) }
    }

    /// A 1-D f64 tensor over the whole slice.
    pub fn vec_f64(values: &'a [f64]) -> TensorRef<'a> {
        TensorRef { dtype: Dtype::F64, shape: Cow::Owned(vec![values.len() as u64]), data: f64_bytes(values) }
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Number of elements (1 for a scalar, shape `[]`).
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Elements `offset .. offset + len` in C order (row-major, as the bytes
    /// lie) as a 1-D tensor over the same memory: a range of a sliced step
    /// ([`PartGrad::Range`](crate::PartGrad::Range)). Nothing is copied
    /// where this tensor borrows its bytes (always, on little-endian hosts).
    pub fn flat_range(&self, offset: usize, len: usize) -> Result<TensorRef<'a>> {
        let numel = self.numel();
        if offset > numel || len > numel - offset {
            return Err(Error::invalid(format!(
                "elements {offset}..{} are beyond the tensor's {numel}",
                offset as u128 + len as u128
            )));
        }
        let size = self.dtype.size();
        let (from, to) = (offset * size, (offset + len) * size);
        let data = match self.data {
            Cow::Borrowed(b) => Cow::Borrowed(&b[from..to]),
            Cow::Owned(ref v) => Cow::Owned(v[from..to].to_vec()),
        };
        Ok(TensorRef { dtype: self.dtype, shape: Cow::Owned(vec![len as u64]), data })
    }

    /// The caller's bytes with their full lifetime, when they are borrowed
    /// (always, on little-endian hosts).
    pub(crate) fn borrowed_bytes(&self) -> Option<&'a [u8]> {
        match self.data {
            Cow::Borrowed(b) => Some(b),
            Cow::Owned(_) => None,
        }
    }

    pub fn to_owned(&self) -> Tensor {
        Tensor { dtype: self.dtype, shape: self.shape.to_vec(), data: self.data.to_vec() }
    }
}

fn check_len(dtype: Dtype, shape: &[u64], len: usize) -> Result<()> {
    if shape.len() > 8 {
        return Err(Error::invalid(format!("{} dimensions; the protocol allows 8", shape.len())));
    }
    match byte_len(dtype, shape) {
        Some(n) if n == len => Ok(()),
        Some(n) => Err(Error::invalid(format!(
            "{} bytes of data for a {} tensor of shape {:?}, which needs {}",
            len,
            dtype.as_str(),
            shape,
            n
        ))),
        None => Err(Error::invalid(format!("shape {shape:?} is too large"))),
    }
}

#[cfg(target_endian = "little")]
fn f32_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    // SAFETY: f32 has no padding and every byte pattern is a valid u8; the
    // length covers exactly the slice's memory, and u8 needs no alignment.
    Cow::Borrowed(unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    })
}

#[cfg(target_endian = "little")]
fn f64_bytes(values: &[f64]) -> Cow<'_, [u8]> {
    // SAFETY: as for f32_bytes.
    Cow::Borrowed(unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    })
}

#[cfg(target_endian = "big")]
fn f32_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

#[cfg(target_endian = "big")]
fn f64_bytes(values: &[f64]) -> Cow<'_, [u8]> {
    Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}
