//! Sliced steps (docs/protocol.md, `step`, "Sliced steps"): one step sent as
//! several `step` messages with `part: {index, count}`, gradients whole or as
//! ranges `{offset, values}`. `Client::step` with `StepOptions::part_elements`
//! cuts and pipelines them; `Client::step_part` sends one part.
//!
//! Against the real daemon: sessions stepped in parts end bit for bit where
//! twin sessions stepped whole do (parameters and every state slot, nadam's
//! per-tensor scalar included), f32 and f64; large ranges are padded and read
//! in place; parts out of order; a pending step refusing other steps with
//! `STEP_PENDING` until a retry completes it; `abandon_step`; optimizers that
//! are not element-wise refusing parts. Without a daemon: how gradients are
//! cut, what a part puts on the wire, and (against a fake REP peer) that
//! parts are pipelined, replies matched out of order, and a refused part
//! leaves the connection usable.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Daemon;
use optimd::wire::{request, slice_grads, MAX_PARTS};
use optimd::*;
use rmpv::Value;

fn client(d: &Daemon) -> Client {
    Client::connect_timeout(&d.url, Duration::from_secs(60)).expect("connect")
}

fn server_code(r: Result<impl std::fmt::Debug>) -> ErrorCode {
    match r {
        Err(e @ Error::Server { .. }) => e.code().expect("a known code"),
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn invalid(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Invalid(m)) => m,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

const SHAPES: [(&str, &[u64]); 4] = [("w1", &[37]), ("w2", &[13, 11]), ("b", &[5]), ("w3", &[3, 5, 7])];

/// Cut sizes, one per step: odd sizes that cut the tensors in odd places, 1
/// (every element its own part), one larger than everything (one part).
const PART_SIZES: [u64; 7] = [17, 5, 1, 64, 3, 1000, 29];

type Grads = Vec<(&'static str, Tensor)>;

/// Values in [-2, 2) from a seed (splitmix64).
fn values(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(12345);
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        })
        .collect()
}

fn tensor(dtype: Dtype, shape: &[u64], v: &[f64]) -> Tensor {
    match dtype {
        Dtype::F32 => Tensor::from_f32(shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
        Dtype::F64 => Tensor::from_f64(shape, v),
    }
    .unwrap()
}

fn tensors_of(dtype: Dtype, seed: u64, shapes: &[(&'static str, &[u64])]) -> Grads {
    shapes
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product::<u64>() as usize;
            (*name, tensor(dtype, shape, &values(seed * 100 + i as u64, n)))
        })
        .collect()
}

fn tensors(dtype: Dtype, seed: u64) -> Grads {
    tensors_of(dtype, seed, &SHAPES)
}

fn refs<'a>(g: &'a [(&'static str, Tensor)]) -> Vec<(&'static str, TensorRef<'a>)> {
    g.iter().map(|(n, t)| (*n, t.as_ref())).collect()
}

fn as_map(g: &[(&'static str, Tensor)]) -> BTreeMap<String, Tensor> {
    g.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()
}

static NAMES: AtomicU32 = AtomicU32::new(0);

fn open(c: &mut Client, optimizer: &str, opts: &OpenOptions, params: &[(&'static str, Tensor)]) -> Session {
    let name = format!("{optimizer}-{}", NAMES.fetch_add(1, Ordering::Relaxed));
    let s = c.open(&name, optimizer, opts).unwrap().session;
    c.register(&s, &refs(params)).unwrap();
    s
}

fn adamw() -> OpenOptions {
    OpenOptions::new().hparam("lr", 1e-2)
}

/// Parameters, every state slot, steps, lr and per-parameter steps, bit for
/// bit.
fn assert_same_session(c: &mut Client, a: &Session, b: &Session, when: &str) {
    assert_eq!(c.pull(a, None).unwrap(), c.pull(b, None).unwrap(), "parameters {when}");
    assert_eq!(c.state(a, None).unwrap(), c.state(b, None).unwrap(), "state {when}");
    let (ia, ib) = (c.info(a, None).unwrap(), c.info(b, None).unwrap());
    assert_eq!((ia.steps, ia.lr), (ib.steps, ib.lr), "steps, lr {when}");
    let steps = |i: &SessionInfo| i.params.iter().map(|p| (p.name.clone(), p.steps)).collect::<Vec<_>>();
    assert_eq!(steps(&ia), steps(&ib), "per-parameter steps {when}");
}

/// What a part carries for one parameter: the whole tensor or the range's
/// values.
fn values_of<'p, 'a>(pg: &'p PartGrad<'a>) -> &'p TensorRef<'a> {
    match pg {
        PartGrad::Whole(t) | PartGrad::Range { values: t, .. } => t,
    }
}

/// The elements `offset .. offset + n` of a tensor's bytes.
fn elements(t: &Tensor, offset: u64, n: u64) -> &[u8] {
    let size = t.dtype().size();
    &t.bytes()[offset as usize * size..(offset + n) as usize * size]
}

#[test]
fn sliced_steps_are_bit_identical_to_whole_steps() {
    let d = Daemon::start();
    let mut c = client(&d);
    let optimizers = [
        (
            "adamw",
            OpenOptions::new()
                .hparam("lr", 1e-2)
                .hparam("weight_decay", 0.1)
                .scheduler("exponential")
                .sched_hparam("gamma", 0.9),
        ),
        ("nadam", OpenOptions::new().hparam("lr", 1e-2)),
    ];
    for (optimizer, opts) in &optimizers {
        for dtype in [Dtype::F32, Dtype::F64] {
            let start = tensors(dtype, 0);
            let whole = open(&mut c, optimizer, opts, &start);
            let sliced = open(&mut c, optimizer, opts, &start);
            for (step, &size) in PART_SIZES.iter().enumerate() {
                let when = format!("{optimizer} {dtype:?} after step {} (parts of {size})", step + 1);
                let g = tensors(dtype, 1000 + step as u64);
                let want = c.step(&whole, &refs(&g), &StepOptions::new()).unwrap();
                let opts = StepOptions::new()
                    .seq("trainer", step as u64 + 1)
                    .part_elements(size)
                    .parts_in_flight(1 + step % 3);
                let got = c.step(&sliced, &refs(&g), &opts).unwrap();
                assert_eq!(got.params, want.params, "{when}");
                assert_eq!(got.params.as_ref().unwrap().len(), SHAPES.len(), "{when}");
                assert_eq!(
                    (got.steps, got.lr, got.next_lr, got.duplicate),
                    (want.steps, want.lr, want.next_lr, false),
                    "{when}"
                );
                assert_eq!(c.info(&sliced, None).unwrap().pending_step, None, "{when}");
            }
            assert_same_session(&mut c, &sliced, &whole, &format!("{optimizer} {dtype:?}"));
            assert_eq!(c.info(&sliced, Some("trainer")).unwrap().client_seq, Some(PART_SIZES.len() as u64));
            if *optimizer == "nadam" {
                // The per-tensor scalar slot went through the parts too.
                let state = c.state(&sliced, None).unwrap();
                assert!(
                    state["w2"].values().any(|t| t.shape().is_empty()),
                    "nadam keeps a 0-dim slot per parameter: {:?}",
                    state["w2"].keys()
                );
            }
        }
    }
    // A step naming some parameters only, with clip_value (element-wise,
    // so allowed in parts), and a step with no gradients at all.
    let start = tensors(Dtype::F32, 0);
    let whole = open(&mut c, "adamw", &adamw(), &start);
    let sliced = open(&mut c, "adamw", &adamw(), &start);
    let g = tensors(Dtype::F32, 7);
    let subset = [&g[1], &g[3]].map(|(n, t)| (*n, t.clone()));
    for (i, grads) in [&subset[..], &g[..], &[]].into_iter().enumerate() {
        let want = c.step(&whole, &refs(grads), &StepOptions::new().clip_value(0.5)).unwrap();
        let opts = StepOptions::new().seq("x", i as u64 + 1).clip_value(0.5).part_elements(31);
        let got = c.step(&sliced, &refs(grads), &opts).unwrap();
        assert_eq!(got.params, want.params, "step {i}");
        assert_eq!(got.steps, want.steps, "step {i}");
    }
    assert_same_session(&mut c, &sliced, &whole, "subsets");
    drop(c);
    d.stop();
}

/// An unlabelled sample from the daemon's metrics endpoint (the address its
/// log names).
fn scrape(d: &Daemon, name: &str) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let log = d.log();
        if let Some(rest) = log.split("metrics on http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no metrics address in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let prefix = format!("{name} ");
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line[prefix.len()..].trim().parse().unwrap()
}

/// Ranges of 64 KiB and more carry `pad`, so the daemon reads them where
/// they lie (`optimd_unaligned_gradients_total` stays 0), with up to 16
/// large parts in flight, over tcp:// and ipc://; the result is the whole
/// step's.
#[test]
fn large_ranges_are_pipelined_and_read_in_place() {
    let sock = common::scratch_dir("ipc").join("optimd.sock");
    let ipc_url = format!("ipc://{}", sock.display());
    let d = Daemon::start_with(&["--listen", &ipc_url, "--metrics-listen", "127.0.0.1:0"]);
    let shapes: [(&'static str, &[u64]); 2] = [("big", &[300_000]), ("big64", &[400, 500])];
    // f32 over tcp://, f64 over ipc://.
    for (dtype, url) in [(Dtype::F32, d.url.clone()), (Dtype::F64, ipc_url)] {
        let mut c = Client::connect_timeout(&url, Duration::from_secs(60)).expect("connect");
        let start = tensors_of(dtype, 1, &shapes);
        let whole = open(&mut c, "adamw", &adamw(), &start);
        let sliced = open(&mut c, "adamw", &adamw(), &start);
        for (step, (size, window)) in
            [(80_000, 4), (120_000, 2), (65_536, 3), (250_001, 1), (90_001, 16)].into_iter().enumerate()
        {
            let g = tensors_of(dtype, 10 + step as u64, &shapes);
            let parts = slice_grads(&refs(&g), size).unwrap();
            assert!(parts.len() >= 2);
            for p in &parts {
                for (name, pg) in p {
                    let bytes = values_of(pg).bytes().len();
                    assert!(bytes >= 65536, "{name}: a range of {bytes} bytes would not be padded");
                }
            }
            let back = step % 2 == 0;
            let want = c.step(&whole, &refs(&g), &StepOptions::new().return_params(back)).unwrap();
            let opts = StepOptions::new()
                .seq("big", step as u64 + 1)
                .part_elements(size)
                .parts_in_flight(window)
                .return_params(back);
            let got = c.step(&sliced, &refs(&g), &opts).unwrap();
            assert_eq!(got.params.is_some(), back);
            assert_eq!(got.params, want.params, "{dtype:?} step {}", step + 1);
            assert_eq!(got.steps, step as u64 + 1);
        }
        assert_same_session(&mut c, &sliced, &whole, &format!("{dtype:?} over {url}"));
    }
    assert_eq!(scrape(&d, "optimd_unaligned_gradients_total"), 0.0, "large ranges copied to be aligned");
    d.stop();
}

#[test]
fn parts_out_of_order_via_step_part() {
    let d = Daemon::start();
    let mut c = client(&d);
    let start = tensors(Dtype::F32, 0);
    let whole = open(&mut c, "adamw", &adamw(), &start);
    let sliced = open(&mut c, "adamw", &adamw(), &start);
    let g = tensors(Dtype::F32, 1);
    let want = c.step(&whole, &refs(&g), &StepOptions::new()).unwrap();
    let want_params = want.params.unwrap();
    let grads = refs(&g);
    let parts = slice_grads(&grads, 80).unwrap(); // 290 elements
    assert_eq!(parts.len(), 4);
    let opts = StepOptions::new().seq("x", 1);
    for (k, index) in [2usize, 0, 3, 1].into_iter().enumerate() {
        let r = c.step_part(&sliced, &parts[index], index as u32, 4, &opts).unwrap();
        let last = k == 3;
        assert_eq!((r.complete, r.parts, r.duplicate), (last, k as u64 + 1, false), "part {index}");
        assert_eq!(r.steps, last as u64, "part {index}");
        if !last {
            assert_eq!(r.next_lr, r.lr);
            let info = c.info(&sliced, None).unwrap();
            assert_eq!(info.steps, 0);
            let pending = PendingStep { client: "x".into(), seq: 1, count: 4, applied: k as u64 + 1 };
            assert_eq!(info.pending_step, Some(pending));
        }
        // Each part's reply: the new values of exactly its elements, already
        // final (the update is element-wise).
        let params = r.params.unwrap();
        assert_eq!(params.keys().map(String::as_str).collect::<Vec<_>>().len(), parts[index].len());
        for (name, pg) in &parts[index] {
            let (offset, n) = pg.span();
            let got = &params[*name];
            assert_eq!((got.offset, got.values.shape()), (offset, &[n][..]), "part {index}: {name}");
            assert_eq!(got.values.bytes(), elements(&want_params[*name], offset, n), "part {index}: {name}");
        }
    }
    assert_eq!(c.info(&sliced, None).unwrap().pending_step, None);
    assert_same_session(&mut c, &sliced, &whole, "after parts 2, 0, 3, 1");

    // A second step sent 1, 0, without params in the replies.
    let g = tensors(Dtype::F32, 2);
    let want = c.step(&whole, &refs(&g), &StepOptions::new()).unwrap();
    let grads = refs(&g);
    let parts = slice_grads(&grads, 200).unwrap();
    assert_eq!(parts.len(), 2);
    let opts = StepOptions::new().seq("x", 2).return_params(false);
    let first = c.step_part(&sliced, &parts[1], 1, 2, &opts).unwrap();
    assert_eq!((first.complete, first.params), (false, None));
    let r = c.step_part(&sliced, &parts[0], 0, 2, &opts).unwrap();
    assert_eq!((r.complete, r.steps, r.next_lr), (true, 2, want.next_lr));
    assert_same_session(&mut c, &sliced, &whole, "after parts 1, 0");

    // Hand-made ranges: a tensor in three pieces across two parts.
    let g = tensors(Dtype::F32, 3);
    c.step(&whole, &refs(&g), &StepOptions::new()).unwrap();
    let w1 = g[0].1.as_ref();
    let rest: Vec<(&str, PartGrad)> = g[1..].iter().map(|(n, t)| (*n, PartGrad::from(t.as_ref()))).collect();
    let mut p0 = vec![("w1", PartGrad::range(30, w1.flat_range(30, 7).unwrap()))];
    p0.extend(rest);
    let p1 = [("w1", PartGrad::range(0, w1.flat_range(0, 30).unwrap()))];
    let opts = StepOptions::new().seq("x", 3);
    assert!(!c.step_part(&sliced, &p0, 0, 2, &opts).unwrap().complete);
    assert!(c.step_part(&sliced, &p1, 1, 2, &opts).unwrap().complete);
    assert_same_session(&mut c, &sliced, &whole, "after hand-made ranges");
    drop(c);
    d.stop();
}

#[test]
fn a_pending_step_refuses_others_with_step_pending_until_a_retry_completes_it() {
    let d = Daemon::start();
    let mut c = client(&d);
    let start = tensors(Dtype::F32, 0);
    let whole = open(&mut c, "adamw", &adamw(), &start);
    let sliced = open(&mut c, "adamw", &adamw(), &start);
    let g = tensors(Dtype::F32, 1);
    let want = c.step(&whole, &refs(&g), &StepOptions::new()).unwrap();
    let grads = refs(&g);
    let parts = slice_grads(&grads, 70).unwrap();
    let count = parts.len() as u32;
    assert_eq!(count, 5);
    let opts = StepOptions::new().seq("a", 5);
    let first = c.step_part(&sliced, &parts[0], 0, count, &opts).unwrap();
    c.step_part(&sliced, &parts[2], 2, count, &opts).unwrap();
    let pending = Some(PendingStep { client: "a".into(), seq: 5, count: 5, applied: 2 });
    assert_eq!(c.info(&sliced, None).unwrap().pending_step, pending);
    // Reads see the parameters part-updated.
    let pulled = c.pull(&sliced, None).unwrap();
    let w1 = &first.params.as_ref().unwrap()["w1"];
    assert_eq!(elements(&pulled["w1"], w1.offset, w1.values.numel() as u64), w1.values.bytes());
    let state = c.state(&sliced, None).unwrap();

    let mut other = client(&d);
    let g2 = tensors(Dtype::F32, 2);
    let g2 = refs(&g2);
    let mut hp = Hparams::new();
    hp.insert("lr".into(), HValue::Float(0.5));
    let refused: Vec<(&str, Result<()>)> = vec![
        ("a plain step", other.step(&sliced, &g2, &StepOptions::new()).map(drop)),
        ("a step of another client", other.step(&sliced, &g2, &StepOptions::new().seq("b", 1)).map(drop)),
        ("the same client's next seq", other.step(&sliced, &g2, &StepOptions::new().seq("a", 6)).map(drop)),
        (
            "a part of another step",
            other.step_part(&sliced, &parts[1], 1, count, &StepOptions::new().seq("b", 1)).map(drop),
        ),
        (
            "a sliced step of another client",
            other.step(&sliced, &g2, &StepOptions::new().seq("b", 1).part_elements(70)).map(drop),
        ),
        ("set_hparams", other.set_hparams(&sliced, &hp).map(drop)),
        ("switch", other.switch(&sliced, "adam", None).map(drop)),
        ("export", other.export(&sliced).map(drop)),
    ];
    for (what, r) in refused {
        match r {
            Err(Error::Server { code, name, .. }) => assert_eq!((code, name.as_str()), (26, "STEP_PENDING"), "{what}"),
            other => panic!("{what}: expected STEP_PENDING, got {other:?}"),
        }
    }
    assert_eq!(other.pull(&sliced, None).unwrap(), pulled, "refused requests changed nothing");
    assert_eq!(other.state(&sliced, None).unwrap(), state);
    let info = other.info(&sliced, None).unwrap();
    assert_eq!((info.steps, info.pending_step), (0, pending));
    // A part already applied, sent again: a duplicate with its current values.
    let dup = other.step_part(&sliced, &parts[0], 0, count, &opts).unwrap();
    assert_eq!((dup.duplicate, dup.complete, dup.parts), (true, false, 2));
    assert_eq!(dup.params.unwrap()["w1"], *w1);

    // The whole step again, same seq and cuts: parts 0 and 2 are
    // duplicates, the others apply and complete it.
    let got = c.step(&sliced, &grads, &StepOptions::new().seq("a", 5).part_elements(70)).unwrap();
    assert!(!got.duplicate);
    assert_eq!((got.steps, got.lr, got.next_lr), (want.steps, want.lr, want.next_lr));
    assert_eq!(got.params, want.params);
    assert_eq!(c.info(&sliced, None).unwrap().pending_step, None);
    assert_eq!(c.info(&sliced, Some("a")).unwrap().client_seq, Some(5));
    assert_same_session(&mut c, &sliced, &whole, "after the retry");
    // Once more: every part a duplicate, and so is the result.
    let again = c.step(&sliced, &grads, &StepOptions::new().seq("a", 5).part_elements(70).parts_in_flight(5)).unwrap();
    assert!(again.duplicate);
    assert_eq!((again.steps, again.params), (1, want.params));
    // Now the others go through.
    assert_eq!(other.step(&sliced, &g2, &StepOptions::new().seq("b", 1)).unwrap().steps, 2);
    assert_eq!(c.step(&whole, &g2, &StepOptions::new()).unwrap().steps, 2);
    assert_same_session(&mut c, &sliced, &whole, "after the next step");
    drop((c, other));
    d.stop();
}

#[test]
fn a_refused_part_leaves_a_pending_step_that_a_retry_completes() {
    let d = Daemon::start();
    let mut c = client(&d);
    let start = tensors(Dtype::F64, 0);
    let whole = open(&mut c, "nadam", &adamw(), &start);
    let sliced = open(&mut c, "nadam", &adamw(), &start);
    let g = tensors(Dtype::F64, 1);
    let want = c.step(&whole, &refs(&g), &StepOptions::new()).unwrap();
    let mut bad = g.clone();
    let mut w3 = bad[3].1.to_f64().unwrap();
    w3[50] = f64::INFINITY; // element 235 of 290: in the third part of 100
    bad[3].1 = Tensor::from_f64(&[3, 5, 7], &w3).unwrap();
    let opts = StepOptions::new().seq("r", 1).part_elements(100);
    assert_eq!(server_code(c.step(&sliced, &refs(&bad), &opts.clone().parts_in_flight(2))), ErrorCode::Nonfinite);
    let pending = c.info(&sliced, None).unwrap().pending_step.expect("a pending step");
    assert_eq!((pending.client.as_str(), pending.seq, pending.count), ("r", 1, 3));
    assert_eq!(pending.applied, 2);
    // The connection is still in step: the retry, on it, completes the step.
    let got = c.step(&sliced, &refs(&g), &opts.parts_in_flight(3)).unwrap();
    assert_eq!((got.steps, &got.params), (1, &want.params));
    assert_same_session(&mut c, &sliced, &whole, "after the retry");
    drop(c);
    d.stop();
}

#[test]
fn abandon_step_ends_a_pending_step_as_it_stands() {
    let d = Daemon::start();
    let mut c = client(&d);
    let start = tensors(Dtype::F32, 0);
    let whole = open(&mut c, "adamw", &adamw(), &start);
    let sliced = open(&mut c, "adamw", &adamw(), &start);
    assert_eq!(server_code(c.abandon_step(&sliced, 3, Some("z"))), ErrorCode::BadRequest, "nothing pending");
    let g = tensors(Dtype::F32, 1);
    let want = c.step(&whole, &refs(&g), &StepOptions::new()).unwrap().params.unwrap();
    let grads = refs(&g);
    let parts = slice_grads(&grads, 80).unwrap();
    assert_eq!(parts.len(), 4);
    let opts = StepOptions::new().seq("z", 3);
    for index in [0, 1] {
        c.step_part(&sliced, &parts[index], index as u32, 4, &opts).unwrap();
    }
    assert_eq!(server_code(c.abandon_step(&sliced, 2, Some("z"))), ErrorCode::BadRequest, "another seq");
    assert_eq!(server_code(c.abandon_step(&sliced, 3, None)), ErrorCode::BadRequest, "another client");
    assert_eq!(c.info(&sliced, None).unwrap().pending_step.map(|p| p.applied), Some(2));

    let a = c.abandon_step(&sliced, 3, Some("z")).unwrap();
    assert_eq!((a.steps, a.parts), (1, 2));
    assert_eq!(a.next_lr, a.lr);
    let info = c.info(&sliced, Some("z")).unwrap();
    assert_eq!((info.steps, info.pending_step, info.client_seq), (1, None, Some(3)));
    // The elements the two parts carried are updated, the others not.
    let pulled = c.pull(&sliced, None).unwrap();
    let start = as_map(&start);
    for (index, part) in parts.iter().enumerate() {
        for (name, pg) in part {
            let (offset, n) = pg.span();
            let expect = if index < 2 { &want[*name] } else { &start[*name] };
            assert_eq!(elements(&pulled[*name], offset, n), elements(expect, offset, n), "part {index}: {name}");
        }
    }
    // Its other parts are duplicates now; the next step goes through.
    let dup = c.step_part(&sliced, &parts[2], 2, 4, &opts).unwrap();
    assert!(dup.duplicate && dup.complete, "{dup:?}");
    assert_eq!(c.info(&sliced, None).unwrap().steps, 1);
    let next = c.step(&sliced, &grads, &StepOptions::new().seq("z", 4).part_elements(80)).unwrap();
    assert_eq!((next.steps, next.duplicate), (2, false));
    assert_eq!(c.info(&sliced, None).unwrap().pending_step, None);
    drop(c);
    d.stop();
}

#[test]
fn optimizers_that_are_not_element_wise_refuse_parts() {
    let d = Daemon::start();
    let mut c = client(&d);
    let plugins: BTreeMap<String, PluginInfo> = c.plugins().unwrap().into_iter().map(|p| (p.id.clone(), p)).collect();
    assert_eq!(plugins["adamw"].sliced, Some(true));
    assert_eq!(plugins["nadam"].sliced, Some(true));
    assert_eq!(plugins["lamb"].sliced, Some(false));
    let start = tensors(Dtype::F32, 0);
    let s = open(&mut c, "lamb", &OpenOptions::new().hparam("lr", 1e-3), &start);
    let g = tensors(Dtype::F32, 1);
    let grads = refs(&g);
    let opts = StepOptions::new().seq("l", 1);
    assert_eq!(server_code(c.step(&s, &grads, &opts.clone().part_elements(50))), ErrorCode::BadRequest);
    let whole: Vec<(&str, PartGrad)> = grads.iter().map(|(n, t)| (*n, PartGrad::from(t.clone()))).collect();
    assert_eq!(server_code(c.step_part(&s, &whole, 0, 1, &opts)), ErrorCode::BadRequest);
    let info = c.info(&s, None).unwrap();
    assert_eq!((info.steps, info.pending_step), (0, None));
    assert_eq!(c.pull(&s, None).unwrap(), as_map(&start));
    assert_eq!(c.step(&s, &grads, &opts).unwrap().steps, 1, "whole steps still work");
    drop(c);
    d.stop();
}

#[test]
fn the_client_refuses_what_cannot_make_a_sliced_step() {
    let d = Daemon::start();
    let mut c = client(&d);
    let start = tensors(Dtype::F32, 0);
    let s = open(&mut c, "adamw", &adamw(), &start);
    let g = tensors(Dtype::F32, 1);
    let grads = refs(&g);
    assert!(invalid(c.step(&s, &grads, &StepOptions::new().part_elements(10))).contains("needs seq"));
    let seq = StepOptions::new().seq("c", 1);
    assert!(
        invalid(c.step(&s, &grads, &seq.clone().part_elements(10).clip_norm(ClipNorm::new(1.0)))).contains("clip_norm")
    );
    invalid(c.step(&s, &grads, &seq.clone().part_elements(10).worker("w")));
    invalid(c.step(&s, &grads, &seq.clone().part_elements(0)));
    invalid(c.step(&s, &grads, &seq.clone().part_elements(10).parts_in_flight(0)));
    invalid(c.step(&s, &grads, &seq.clone().parts_in_flight(2)));
    let twice = [grads[0].clone(), grads[0].clone()];
    assert!(invalid(c.step(&s, &twice, &seq.clone().part_elements(10))).contains("twice"));
    let part: Vec<(&str, PartGrad)> = vec![("b", PartGrad::from(grads[2].1.clone()))];
    assert!(invalid(c.step_part(&s, &part, 0, 1, &StepOptions::new())).contains("needs seq"));
    invalid(c.step_part(&s, &part, 0, 1, &seq.clone().clip_norm(ClipNorm::new(1.0))));
    invalid(c.step_part(&s, &part, 0, 1, &seq.clone().part_elements(3)));
    let info = c.info(&s, None).unwrap();
    assert_eq!((info.steps, info.pending_step), (0, None), "nothing was sent");
    // The daemon's own checks of a part.
    let w1 = grads[0].1.clone();
    let past_end = [("w1", PartGrad::range(30, w1.flat_range(0, 10).unwrap()))];
    assert_eq!(server_code(c.step_part(&s, &past_end, 0, 2, &seq)), ErrorCode::BadTensor);
    assert_eq!(server_code(c.step_part(&s, &part, 2, 2, &seq)), ErrorCode::BadRequest, "index not below count");
    assert_eq!(server_code(c.step_part(&s, &part, 0, 0, &seq)), ErrorCode::BadRequest, "count 0");
    assert_eq!(server_code(c.step_part(&s, &part, 0, MAX_PARTS + 1, &seq)), ErrorCode::BadRequest);
    assert!(w1.flat_range(30, 8).is_err());
    assert_eq!(c.info(&s, None).unwrap().pending_step, None);
    drop(c);
    d.stop();
}

// -- without a daemon ---------------------------------------------------------

#[test]
fn slice_grads_cuts_in_order_and_borrows() {
    let a: Vec<f32> = (0..5).map(|i| i as f32).collect();
    let b: Vec<f64> = (0..12).map(|i| i as f64 * 0.5).collect();
    let s = [7.0f32];
    let grads = [
        ("a", TensorRef::vec_f32(&a)),
        ("b", TensorRef::f64(&[3, 4], &b).unwrap()),
        ("e", TensorRef::f32(&[0, 2], &[]).unwrap()),
        ("s", TensorRef::f32(&[], &s).unwrap()),
    ];
    for size in [1u64, 2, 3, 4, 5, 6, 7, 17, 18, 100] {
        let parts = slice_grads(&grads, size).unwrap();
        assert_eq!(parts.len() as u64, 18u64.div_ceil(size), "parts of {size}");
        let mut seen: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for (k, part) in parts.iter().enumerate() {
            let mut n = 0;
            for (name, pg) in part {
                let whole = &grads.iter().find(|(g, _)| g == name).unwrap().1;
                let got = seen.entry(name).or_default();
                match pg {
                    PartGrad::Whole(t) => {
                        assert_eq!((t.shape(), t.bytes()), (whole.shape(), whole.bytes()), "{name}");
                        assert!(got.is_empty(), "{name} whole after a range");
                        got.extend_from_slice(t.bytes());
                    }
                    PartGrad::Range { offset, values } => {
                        assert_eq!(values.shape().len(), 1);
                        assert!(values.numel() >= 1 && values.numel() < whole.numel(), "{name}");
                        assert_eq!(*offset as usize * whole.dtype().size(), got.len(), "{name}: in order");
                        // A view of the caller's memory, not a copy.
                        let at = values.bytes().as_ptr() as usize - whole.bytes().as_ptr() as usize;
                        assert_eq!(at, got.len(), "{name}: borrowed");
                        got.extend_from_slice(values.bytes());
                    }
                }
                n += pg.span().1;
            }
            assert!(n <= size);
            if k + 1 < parts.len() {
                assert_eq!(n, size, "part {k} of {size} is full");
            }
        }
        for (name, t) in &grads {
            assert_eq!(seen[name], t.bytes(), "{name}: every element once, in order (parts of {size})");
        }
    }
    assert_eq!(slice_grads(&[], 4).unwrap().len(), 1);
    assert!(matches!(slice_grads(&grads, 0), Err(Error::Invalid(_))));
    // Never more than MAX_PARTS parts.
    let many = vec![0f32; MAX_PARTS as usize * 2];
    assert_eq!(slice_grads(&[("w", TensorRef::vec_f32(&many))], 1).unwrap().len(), MAX_PARTS as usize);
    let many = vec![0f32; MAX_PARTS as usize * 2 + 1];
    assert_eq!(slice_grads(&[("w", TensorRef::vec_f32(&many))], 1).unwrap().len(), 43_691);
    // parts of 3
}

#[test]
fn part_requests_on_the_wire() {
    let big: Vec<f32> = (0..70_001).map(|i| i as f32).collect();
    let big64: Vec<f64> = (0..20_000).map(|i| -(i as f64)).collect();
    let small = [1f32, 2.0, 3.0];
    let grads =
        [("small", TensorRef::vec_f32(&small)), ("big", TensorRef::vec_f32(&big)), ("f64", TensorRef::vec_f64(&big64))];
    let mut pads_seen = std::collections::BTreeSet::new();
    for extra in 0..16 {
        // The session name comes before the gradients: every offset mod 16.
        let session = Session::new("s".repeat(extra + 1), "0123456789abcdef0123456789abcdef");
        let client = "c".repeat(extra);
        let parts = slice_grads(&grads, 33_333).unwrap();
        assert_eq!(parts.len(), 3);
        let mut covered: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (index, part) in parts.iter().enumerate() {
            let o = StepOptions::new().seq(&client, 9).return_params(false).clip_value(2.0);
            let m = request::step_part(100 + index as u64, &session, part, index as u32, 3, &o).unwrap();
            // Each large range's data lies where 4 + its offset is a multiple of 16.
            let mut at = 0;
            let mut aligned = 0;
            for sl in m.slices() {
                for (_, pg) in part.iter() {
                    let t = values_of(pg);
                    if t.bytes().len() >= 65536 && sl.as_ptr() == t.bytes().as_ptr() {
                        assert_eq!((4 + at) % 16, 0, "client of {extra}: part {index}: data at {at}");
                        aligned += 1;
                    }
                }
                at += sl.len();
            }
            let large = part.iter().filter(|(_, pg)| values_of(pg).bytes().len() >= 65536).count();
            assert_eq!(aligned, large, "part {index}: every large range sent from the caller's memory");
            let v = rmpv::decode::read_value(&mut &m.to_vec()[..]).unwrap();
            let get =
                |k: &str| v.as_map().unwrap().iter().find(|(key, _)| key.as_str() == Some(k)).map(|(_, v)| v.clone());
            assert_eq!(get("op"), Some(Value::from("step")));
            assert_eq!(
                get("part"),
                Some(Value::Map(vec![
                    (Value::from("index"), Value::from(index)),
                    (Value::from("count"), Value::from(3))
                ]))
            );
            assert_eq!(
                (get("seq"), get("client"), get("return"), get("clip_value")),
                (
                    Some(Value::from(9)),
                    Some(Value::from(client.as_str())),
                    Some(Value::from(false)),
                    Some(Value::from(2.0))
                )
            );
            for (name, g) in get("grads").unwrap().as_map().unwrap() {
                let name = name.as_str().unwrap();
                let map = |v: &Value| {
                    v.as_map()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
                        .collect::<BTreeMap<_, _>>()
                };
                let g = map(g);
                let (offset, t) = match g.get("offset") {
                    Some(o) => (o.as_u64().unwrap(), map(&g["values"])),
                    None => (0, g),
                };
                let data = t["data"].as_slice().unwrap();
                if let Some(pad) = t.get("pad") {
                    assert!(data.len() >= 65536);
                    let pad = pad.as_slice().unwrap();
                    assert!(pad.len() < 16 && pad.iter().all(|&b| b == 0));
                    pads_seen.insert(pad.len());
                } else {
                    assert!(data.len() < 65536, "{name}: a large tensor without pad");
                }
                let size = if name == "f64" { 8 } else { 4 };
                assert_eq!(t["shape"], Value::Array(vec![Value::from(data.len() / size)]));
                let got = covered.entry(name.to_owned()).or_default();
                assert_eq!(offset as usize * size, got.len(), "{name}: in order");
                got.extend_from_slice(data);
            }
        }
        for (name, t) in &grads {
            assert_eq!(covered[*name], t.bytes(), "{name}: every element once");
        }
    }
    assert_eq!(pads_seen.len(), 16, "every pad length came up: {pads_seen:?}");
}

/// A fake REP peer: it reads requests until none comes for a while, then
/// answers the batch in reverse order; each part's reply has its gradient
/// times 2 as the new values, complete at the last index. Records each
/// batch's part indices.
struct Fake {
    url: String,
    batches: Arc<Mutex<Vec<Vec<u64>>>>,
    /// A part index to refuse with STEP_PENDING.
    fail: Arc<Mutex<Option<u64>>>,
}

fn read_frame(s: &mut TcpStream, quiet: Duration) -> io::Result<Option<(u32, Vec<u8>)>> {
    s.set_read_timeout(Some(quiet))?;
    let mut first = [0u8; 1];
    match s.read(&mut first) {
        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
        Err(e) => return Err(e),
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rest = [0u8; 11];
    s.read_exact(&mut rest)?;
    let mut len = [0u8; 8];
    len[0] = first[0];
    len[1..].copy_from_slice(&rest[..7]);
    let n = u64::from_be_bytes(len) as usize - 4;
    let id = u32::from_be_bytes(rest[7..].try_into().unwrap());
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    Ok(Some((id, body)))
}

fn val(x: impl Into<Value>) -> Value {
    x.into()
}

fn field<'v>(m: &'v Value, key: &str) -> Option<&'v Value> {
    m.as_map().unwrap().iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

fn fake_reply(body: &[u8], fail: Option<u64>) -> (u64, Vec<u8>) {
    let req = rmpv::decode::read_value(&mut &body[..]).unwrap();
    let id = field(&req, "id").unwrap().clone();
    let part = field(&req, "part").unwrap();
    let index = field(part, "index").unwrap().as_u64().unwrap();
    let count = field(part, "count").unwrap().as_u64().unwrap();
    let reply = if fail == Some(index) {
        Value::Map(vec![
            (val("v"), val(1)),
            (val("id"), id),
            (val("ok"), val(false)),
            (val("code"), val(26)),
            (val("error"), val("STEP_PENDING")),
            (val("message"), val("refused")),
        ])
    } else {
        let complete = index + 1 == count;
        let mut params = Vec::new();
        for (name, g) in field(&req, "grads").unwrap().as_map().unwrap() {
            let (offset, t) = match field(g, "offset") {
                Some(o) => (o.as_u64().unwrap(), field(g, "values").unwrap()),
                None => (0, g),
            };
            let dtype = field(t, "dtype").unwrap().as_str().unwrap();
            let data = field(t, "data").unwrap().as_slice().unwrap();
            let doubled: Vec<u8> = if dtype == "f32" {
                data.chunks(4).flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * 2.0).to_le_bytes()).collect()
            } else {
                data.chunks(8).flat_map(|c| (f64::from_le_bytes(c.try_into().unwrap()) * 2.0).to_le_bytes()).collect()
            };
            let n = data.len() / if dtype == "f32" { 4 } else { 8 };
            let values = Value::Map(vec![
                (val("dtype"), val(dtype)),
                (val("shape"), Value::Array(vec![val(n as u64)])),
                (val("data"), Value::Binary(doubled)),
            ]);
            params.push((name.clone(), Value::Map(vec![(val("offset"), val(offset)), (val("values"), values)])));
        }
        let mut m = vec![
            (val("v"), val(1)),
            (val("id"), id),
            (val("ok"), val(true)),
            (val("steps"), val(if complete { 8 } else { 7 })),
            (val("lr"), val(0.5)),
            (val("next_lr"), val(if complete { 0.25 } else { 0.5 })),
            (val("duplicate"), val(false)),
            (val("complete"), val(complete)),
            (val("parts"), val(index + 1)),
        ];
        if field(&req, "return") != Some(&val(false)) {
            m.push((val("params"), Value::Map(params)));
        }
        Value::Map(m)
    };
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &reply).unwrap();
    (index, out)
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(None));
        let (b, f) = (batches.clone(), fail.clone());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; 8];
            s.read_exact(&mut hello).unwrap();
            assert_eq!(hello, [0, b'S', b'P', 0, 0, 48, 0, 0], "a REQ0 greeting");
            s.write_all(&[0, b'S', b'P', 0, 0, 49, 0, 0]).unwrap();
            loop {
                let mut batch = Vec::new();
                // The first request of a batch: wait as long as it takes.
                loop {
                    match read_frame(&mut s, Duration::from_millis(if batch.is_empty() { 10_000 } else { 300 })) {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) if batch.is_empty() => continue,
                        Ok(None) => break,
                        Err(_) => return, // the client went away
                    }
                }
                let fail = *f.lock().unwrap();
                let replies: Vec<(u32, u64, Vec<u8>)> = batch
                    .iter()
                    .map(|(id, body)| {
                        let (index, reply) = fake_reply(body, fail);
                        (*id, index, reply)
                    })
                    .collect();
                b.lock().unwrap().push(replies.iter().map(|r| r.1).collect());
                for (id, _, reply) in replies.iter().rev() {
                    let mut frame = ((reply.len() + 4) as u64).to_be_bytes().to_vec();
                    frame.extend_from_slice(&id.to_be_bytes());
                    frame.extend_from_slice(reply);
                    if s.write_all(&frame).is_err() {
                        return;
                    }
                }
            }
        });
        Fake { url, batches, fail }
    }

    fn take_batches(&self) -> Vec<Vec<u64>> {
        std::mem::take(&mut *self.batches.lock().unwrap())
    }
}

#[test]
fn parts_are_pipelined_and_replies_matched_in_any_order() {
    let fake = Fake::start();
    let mut c = Client::connect_timeout(&fake.url, Duration::from_secs(20)).unwrap();
    let session = Session::new("s", "0".repeat(32));
    let a: Vec<f32> = (0..10).map(|i| i as f32 + 0.25).collect();
    let b: Vec<f64> = (0..7).map(|i| i as f64 * -1.5).collect();
    let grads = [("a", TensorRef::f32(&[2, 5], &a).unwrap()), ("b", TensorRef::vec_f64(&b))];
    let a2: Vec<f32> = a.iter().map(|x| x * 2.0).collect();
    let b2: Vec<f64> = b.iter().map(|x| x * 2.0).collect();
    let want: BTreeMap<String, Tensor> = [
        ("a".to_owned(), Tensor::from_f32(&[2, 5], &a2).unwrap()),
        ("b".to_owned(), Tensor::from_f64(&[7], &b2).unwrap()),
    ]
    .into_iter()
    .collect();
    let opts = StepOptions::new().seq("p", 3).part_elements(4); // 17 elements: 5 parts

    // Three in flight: the peer holds three requests before it answers any
    // (a client that waited for each reply would stall here and time out),
    // and answers them last first.
    let r = c.step(&session, &grads, &opts.clone().parts_in_flight(3)).unwrap();
    assert_eq!((r.steps, r.lr, r.next_lr, r.duplicate), (8, 0.5, 0.25, false));
    assert_eq!(r.params.as_ref(), Some(&want));
    let batches = fake.take_batches();
    assert_eq!(batches.concat().len(), 5, "{batches:?}");
    assert_eq!(batches[0], [0, 1, 2], "three parts in flight, never more: {batches:?}");
    assert!(batches.iter().all(|b| b.len() <= 3), "{batches:?}");

    // The default: two.
    let r = c.step(&session, &grads, &opts).unwrap();
    assert_eq!(r.params.as_ref(), Some(&want));
    let batches = fake.take_batches();
    assert_eq!(batches[0], [0, 1], "{batches:?}");
    assert!(batches.iter().all(|b| b.len() <= 2), "{batches:?}");

    // One: one after another.
    let r = c.step(&session, &grads, &opts.clone().parts_in_flight(1).return_params(false)).unwrap();
    assert_eq!((r.steps, r.params), (8, None));
    assert_eq!(fake.take_batches(), [[0], [1], [2], [3], [4]]);

    // Part 1 refused with two in flight: its reply comes first, nothing
    // more is sent, part 0's reply is still read, and the error returned.
    *fake.fail.lock().unwrap() = Some(1);
    let e = c.step(&session, &grads, &opts).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::StepPending), "{e}");
    assert_eq!(fake.take_batches(), [[0, 1]]);
    // The connection stayed in step: the next call on it works.
    *fake.fail.lock().unwrap() = None;
    let r = c.step(&session, &grads, &opts.clone().parts_in_flight(5)).unwrap();
    assert_eq!(r.params.as_ref(), Some(&want));
    assert_eq!(fake.take_batches(), [[0, 1, 2, 3, 4]]);
    // step_part alone: the ranges come back as sent.
    let part =
        [("a", PartGrad::range(3, grads[0].1.flat_range(3, 3).unwrap())), ("b", PartGrad::from(grads[1].1.clone()))];
    let p = c.step_part(&session, &part, 0, 2, &StepOptions::new().seq("z", 1)).unwrap();
    assert_eq!((p.complete, p.parts, p.steps), (false, 1, 7));
    let params = p.params.unwrap();
    assert_eq!((params["a"].offset, params["a"].values.to_f32().unwrap()), (3, a2[3..6].to_vec()));
    assert_eq!((params["b"].offset, params["b"].values.to_f64().unwrap()), (0, b2.clone()));
}
