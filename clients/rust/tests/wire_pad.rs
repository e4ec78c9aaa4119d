//! Large tensors in requests, without a daemon: each tensor with 64 KiB of
//! data or more carries a `pad` key that puts its data where the daemon
//! reads it in place (4 + its body offset a multiple of 16, docs/protocol.md
//! §3); smaller tensors and everything else keep their bytes.

use std::collections::{BTreeMap, BTreeSet};

use optimd::wire::request;
use optimd::*;
use rmpv::Value;

/// The protocol page's threshold, written out so that the test pins it.
const PAD_SIZE: usize = 65536;

/// One tensor of an encoded request as its bytes lie.
#[derive(Debug, Default)]
struct WireTensor {
    keys: Vec<String>,
    data_at: usize,
    data_len: usize,
    pad: Option<Vec<u8>>,
    pad_code: u8,
}

/// A msgpack walk of the test's own over the kinds a request holds.
struct Walk<'b> {
    b: &'b [u8],
    pos: usize,
}

enum Kind {
    Map(usize),
    Arr(usize),
    Str(usize),
    Bin(usize),
    Scalar,
}

impl Walk<'_> {
    fn uint(&mut self, n: usize) -> usize {
        let mut v = 0usize;
        for _ in 0..n {
            v = v * 256 + self.b[self.pos] as usize;
            self.pos += 1;
        }
        v
    }

    fn header(&mut self) -> Kind {
        let c = self.b[self.pos];
        self.pos += 1;
        match c {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Kind::Scalar,
            0x80..=0x8f => Kind::Map((c & 0x0f) as usize),
            0x90..=0x9f => Kind::Arr((c & 0x0f) as usize),
            0xa0..=0xbf => Kind::Str((c & 0x1f) as usize),
            0xc4 => Kind::Bin(self.uint(1)),
            0xc5 => Kind::Bin(self.uint(2)),
            0xc6 => Kind::Bin(self.uint(4)),
            0xd9 => Kind::Str(self.uint(1)),
            0xda => Kind::Str(self.uint(2)),
            0xdb => Kind::Str(self.uint(4)),
            0xdc => Kind::Arr(self.uint(2)),
            0xdd => Kind::Arr(self.uint(4)),
            0xde => Kind::Map(self.uint(2)),
            0xdf => Kind::Map(self.uint(4)),
            0xcc | 0xd0 => {
                self.pos += 1;
                Kind::Scalar
            }
            0xcd | 0xd1 => {
                self.pos += 2;
                Kind::Scalar
            }
            0xca | 0xce | 0xd2 => {
                self.pos += 4;
                Kind::Scalar
            }
            0xcb | 0xcf | 0xd3 => {
                self.pos += 8;
                Kind::Scalar
            }
            _ => panic!("msgpack code {c:#04x} at {}", self.pos - 1),
        }
    }

    fn skip(&mut self) {
        match self.header() {
            Kind::Str(n) | Kind::Bin(n) => self.pos += n,
            Kind::Arr(n) => (0..n).for_each(|_| self.skip()),
            Kind::Map(n) => (0..2 * n).for_each(|_| self.skip()),
            Kind::Scalar => {}
        }
    }

    fn str(&mut self) -> String {
        match self.header() {
            Kind::Str(n) => {
                self.pos += n;
                String::from_utf8(self.b[self.pos - n..self.pos].to_vec()).unwrap()
            }
            _ => panic!("a key that is not a str at {}", self.pos),
        }
    }

    fn map(&mut self) -> usize {
        match self.header() {
            Kind::Map(n) => n,
            _ => panic!("not a map at {}", self.pos),
        }
    }
}

/// Where each tensor of the request's `field` map lies.
fn tensor_layout(b: &[u8], field: &str) -> BTreeMap<String, WireTensor> {
    let mut w = Walk { b, pos: 0 };
    let mut out = BTreeMap::new();
    for _ in 0..w.map() {
        if w.str() != field {
            w.skip();
            continue;
        }
        for _ in 0..w.map() {
            let name = w.str();
            let mut t = WireTensor::default();
            for _ in 0..w.map() {
                let key = w.str();
                t.keys.push(key.clone());
                if key != "data" && key != "pad" {
                    w.skip();
                    continue;
                }
                let code = b[w.pos];
                let Kind::Bin(len) = w.header() else { panic!("{name}.{key} is not bin") };
                if key == "data" {
                    t.data_at = w.pos;
                    t.data_len = len;
                } else {
                    t.pad = Some(b[w.pos..w.pos + len].to_vec());
                    t.pad_code = code;
                }
                w.pos += len;
            }
            out.insert(name, t);
        }
    }
    assert_eq!(w.pos, b.len(), "the request is one msgpack map");
    out
}

/// n elements whose bytes are not all alike.
fn filled(dtype: Dtype, shape: &[u64], seed: u8) -> Tensor {
    let n: u64 = shape.iter().product();
    let data = (0..n as usize * dtype.size()).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
    Tensor::from_bytes(dtype, shape.to_vec(), data).unwrap()
}

fn s(v: &str) -> Value {
    Value::from(v)
}

/// The step request as this client wrote it before padding, built with
/// rmpv: every tensor {dtype, shape, data}.
fn unpadded(id: u64, session: &Session, grads: &[(&str, Tensor)], client: &str) -> Value {
    let tensors = grads
        .iter()
        .map(|(name, t)| {
            let shape = t.shape().iter().map(|&d| Value::from(d)).collect();
            let m = vec![
                (s("dtype"), s(t.dtype().as_str())),
                (s("shape"), Value::Array(shape)),
                (s("data"), Value::Binary(t.bytes().to_vec())),
            ];
            (s(name), Value::Map(m))
        })
        .collect();
    Value::Map(vec![
        (s("v"), Value::from(1u64)),
        (s("id"), Value::from(id)),
        (s("op"), s("step")),
        (s("session"), s(&session.name)),
        (s("token"), s(&session.token)),
        (s("grads"), Value::Map(tensors)),
        (s("seq"), Value::from(2u64)),
        (s("client"), s(client)),
    ])
}

/// Steps with `grads` for session names of 1 to 16 bytes (every offset mod
/// 16 for what follows) and client ids of 0 to 15: each tensor of 64 KiB or
/// more is {dtype, shape, pad, data}, data at an offset where 4 + it is a
/// multiple of 16 and a bin8 pad of at most 15 zeros; each smaller one is
/// {dtype, shape, data}; decoded, the message is the unpadded one but for
/// the pad keys. Returns the pad lengths seen.
fn check_padded(grads: &[(&str, Tensor)]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    for n in 1..=16 {
        let session = Session::new("s".repeat(n), "0123456789abcdef0123456789abcdef");
        let client = "c".repeat(n - 1);
        let refs: Vec<(&str, TensorRef)> = grads.iter().map(|(k, t)| (*k, t.as_ref())).collect();
        let id = 1 << 40;
        let got = request::step(id, &session, &refs, &StepOptions::new().seq(&client, 2)).unwrap().to_vec();
        let layout = tensor_layout(&got, "grads");
        assert_eq!(layout.len(), grads.len());
        for (name, t) in grads {
            let w = &layout[*name];
            assert_eq!(&got[w.data_at..w.data_at + w.data_len], t.bytes(), "session of {n}: {name}: data");
            if t.bytes().len() < PAD_SIZE {
                assert_eq!(w.keys, ["dtype", "shape", "data"], "session of {n}: small {name}");
                continue;
            }
            assert_eq!(w.keys, ["dtype", "shape", "pad", "data"], "session of {n}: large {name}");
            assert_eq!((4 + w.data_at) % 16, 0, "session of {n}: {name}: data at body offset {}", w.data_at);
            let pad = w.pad.as_ref().unwrap();
            assert_eq!(w.pad_code, 0xc4, "{name}: pad is bin8");
            assert!(pad.len() <= 15 && pad.iter().all(|&x| x == 0), "{name}: pad {pad:?}");
            assert_eq!(got[w.data_at - 5], 0xc6, "{name}: data is bin32");
            seen.insert(pad.len());
        }

        // Decoded, it is the unpadded request with pad keys added.
        let mut v = rmpv::decode::read_value(&mut &got[..]).unwrap();
        let Value::Map(top) = &mut v else { panic!("not a map") };
        let (_, Value::Map(gs)) = top.iter_mut().find(|(k, _)| k.as_str() == Some("grads")).unwrap() else {
            panic!("grads")
        };
        for (name, t) in gs.iter_mut() {
            let Value::Map(entries) = t else { panic!("tensor") };
            let large = grads.iter().find(|(k, _)| Some(*k) == name.as_str()).unwrap().1.bytes().len() >= PAD_SIZE;
            let before = entries.len();
            entries.retain(|(k, v)| {
                let is_pad = k.as_str() == Some("pad");
                if is_pad {
                    assert!(matches!(v, Value::Binary(b) if b.iter().all(|&x| x == 0)));
                }
                !is_pad
            });
            assert_eq!(before - entries.len(), large as usize, "{name}: pad key");
        }
        assert_eq!(v, unpadded(id, &session, grads, &client), "session of {n}");
    }
    seen
}

fn all_pad_lengths(seen: BTreeSet<usize>) {
    assert_eq!(seen, (0..16).collect::<BTreeSet<_>>());
}

#[test]
fn one_large_tensor_is_aligned_at_every_offset() {
    all_pad_lengths(check_padded(&[("w", filled(Dtype::F32, &[PAD_SIZE as u64 / 4], 1))]));
}

#[test]
fn large_tensors_of_several_sizes_beside_small_ones() {
    all_pad_lengths(check_padded(&[
        ("a.big", filled(Dtype::F32, &[PAD_SIZE as u64 / 4 + 1], 2)),
        ("b.small", filled(Dtype::F32, &[3], 3)),
        ("c.big64", filled(Dtype::F64, &[12345], 4)),
        ("d.under", filled(Dtype::F32, &[PAD_SIZE as u64 / 4 - 1], 5)),
        ("e.scalar", filled(Dtype::F64, &[], 6)),
        ("f.big", filled(Dtype::F32, &[7, 3001], 7)),
        ("g.empty", filled(Dtype::F32, &[0], 8)),
    ]));
    // register pads too.
    let t = filled(Dtype::F64, &[PAD_SIZE as u64], 1);
    let session = Session::new("s", "t");
    let b = request::register(1, &session, &[("w", t.as_ref())], Some("g")).unwrap().to_vec();
    let w = &tensor_layout(&b, "params")["w"];
    assert_eq!(w.keys, ["dtype", "shape", "pad", "data"]);
    assert_eq!((4 + w.data_at) % 16, 0);
}

#[test]
fn requests_without_a_large_tensor_keep_their_bytes() {
    let grads = [
        ("w", filled(Dtype::F32, &[10], 1)),
        ("v", filled(Dtype::F64, &[PAD_SIZE as u64 / 8 - 1], 2)),
        ("s", filled(Dtype::F32, &[], 3)),
    ];
    let refs: Vec<(&str, TensorRef)> = grads.iter().map(|(k, t)| (*k, t.as_ref())).collect();
    let session = Session::new("run", "0123456789abcdef0123456789abcdef");
    let got = request::step(7, &session, &refs, &StepOptions::new().seq("me", 2)).unwrap().to_vec();
    let mut want = Vec::new();
    rmpv::encode::write_value(&mut want, &unpadded(7, &session, &grads, "me")).unwrap();
    assert_eq!(got, want);
}
