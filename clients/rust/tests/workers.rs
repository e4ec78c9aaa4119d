//! Sessions with workers (protocol.md, Workers) against the real daemon.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::Daemon;
use optimd::*;

fn client(d: &Daemon) -> Client {
    Client::connect_timeout(&d.url, Duration::from_secs(60)).expect("connect")
}

fn server_code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    match r {
        Err(e @ Error::Server { .. }) => e.code().expect("a known code"),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// A reproducible generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// One gradient per worker, each worker's at its own scale, so that
    /// float32 sums depend on their order.
    fn grads(&mut self, workers: usize, n: usize) -> Vec<Vec<f32>> {
        let scales = [1e-3f32, 3.7, 1e3, 0.31];
        (0..workers).map(|w| (0..n).map(|_| self.unit() * scales[w % scales.len()]).collect()).collect()
    }
}

/// A sync round's mean as protocol.md defines it: summed in rank order,
/// each addition rounded to f32, then divided by the number of pushes.
fn rank_order_mean(grads: &[Vec<f32>]) -> Vec<f32> {
    let mut out = grads[0].clone();
    for g in &grads[1..] {
        for (o, x) in out.iter_mut().zip(g) {
            *o += *x;
        }
    }
    let n = grads.len() as f32;
    out.iter().map(|x| x / n).collect()
}

/// Data whose mean does not depend on the summation order could not tell
/// rank order from any other.
fn assert_order_matters(grads: &[Vec<f32>]) {
    let rev: Vec<Vec<f32>> = grads.iter().rev().cloned().collect();
    assert_ne!(rank_order_mean(grads), rank_order_mean(&rev), "test data: the mean ignores the order");
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Four workers push concurrently, arriving in a different order each
/// round (each waits for the round to hold the ones before it); every
/// worker gets the same parameters, bit-identical to a plain SGD session on
/// the same daemon stepped with the rank-order mean computed here in f32.
#[test]
fn sync_workers_match_the_rank_order_mean() {
    let d = Daemon::start();
    let mut c = client(&d);
    const WORKERS: usize = 4;
    const N: usize = 129;
    let settings = Workers::sync(WORKERS as u64).timeout_ms(30_000);
    let s = c.open("sync", "sgd", &OpenOptions::new().hparam("lr", 0.1).workers(settings)).unwrap().session;
    let reference = c.open("ref", "sgd", &OpenOptions::new().hparam("lr", 0.1)).unwrap().session;
    let names: Vec<String> = (0..WORKERS).map(|i| format!("w{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let j = c.join(&s, name).unwrap();
        assert_eq!((j.rank, j.steps, j.workers.members.len()), (i as u64, 0, i + 1), "join {name}");
    }
    let info = c.info(&s, None).unwrap();
    let w = info.workers.expect("info of a session with workers");
    assert_eq!(
        w.settings,
        Workers {
            mode: WorkersMode::Sync,
            count: Some(4),
            reduce: Some(Reduce::Mean),
            timeout_ms: Some(30_000),
            on_timeout: Some(OnTimeout::Fail),
            max_staleness: None
        }
    );
    assert_eq!(w.round_pushes, Some(0));
    assert_eq!(w.members.iter().map(|m| (m.name.as_str(), m.rank)).collect::<Vec<_>>(), [("w0", 0), ("w1", 1), ("w2", 2), ("w3", 3)]);
    assert!(c.info(&reference, None).unwrap().workers.is_none(), "a plain session has no workers");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let p0: Vec<f32> = (0..N).map(|_| rng.unit()).collect();
    for sess in [&s, &reference] {
        c.register(sess, &[("p", TensorRef::vec_f32(&p0))]).unwrap();
    }

    let orders = [[3, 1, 0, 2], [2, 3, 1, 0], [1, 0, 3, 2]];
    for (round, order) in orders.iter().enumerate() {
        let round = round as u64 + 1;
        let grads = rng.grads(WORKERS, N);
        assert_order_matters(&grads);
        let mut handles = Vec::new();
        for (k, &w) in order.iter().enumerate() {
            let (url, ws, g, name) = (d.url.clone(), s.clone(), grads[w].clone(), names[w].clone());
            handles.push((
                w,
                thread::spawn(move || {
                    let mut wc = Client::connect_timeout(&url, Duration::from_secs(60)).expect("connect");
                    wc.step(&ws, &[("p", TensorRef::vec_f32(&g))], &StepOptions::new().worker(&name))
                }),
            ));
            if k + 1 < WORKERS {
                wait_until("the round's pushes", || {
                    c.info(&s, None).unwrap().workers.unwrap().round_pushes.unwrap() > k as u64
                });
            }
        }
        let mean = rank_order_mean(&grads);
        let want = c.step(&reference, &[("p", TensorRef::vec_f32(&mean))], &StepOptions::new()).unwrap();
        let want = want.params.unwrap()["p"].to_f32().unwrap();
        for (w, h) in handles {
            let r = h.join().unwrap().unwrap_or_else(|e| panic!("round {round}, w{w}: {e}"));
            assert_eq!(r.steps, round);
            assert_eq!(r.worker.as_deref(), Some(names[w].as_str()));
            assert_eq!((r.pushes, r.staleness, r.combined), (Some(round), Some(0), Some(4)), "round {round}, w{w}");
            assert_eq!((r.lead, r.waited), (None, None), "sync pushes have no lead or waited");
            let got = r.params.unwrap()["p"].to_f32().unwrap();
            assert_eq!(bits(&got), bits(&want), "round {round}, w{w}: p differs from the rank-order mean's step");
        }
    }
    let pulled = c.pull(&s, None).unwrap()["p"].to_f32().unwrap();
    let ref_p = c.pull(&reference, None).unwrap()["p"].to_f32().unwrap();
    assert_eq!(bits(&pulled), bits(&ref_p));
    assert_eq!(c.info(&s, None).unwrap().steps, orders.len() as u64);
}

/// A round missing a worker fails the waiting push with TIMEOUT and
/// applies nothing.
#[test]
fn sync_round_times_out() {
    let d = Daemon::start();
    let mut c = client(&d);
    let s = c
        .open("t", "sgd", &OpenOptions::new().hparam("lr", 0.5).workers(Workers::sync(2).timeout_ms(200)))
        .unwrap()
        .session;
    c.join(&s, "a").unwrap();
    c.join(&s, "b").unwrap();
    let p = [1.0f32, 2.0, 3.0];
    c.register(&s, &[("p", TensorRef::vec_f32(&p))]).unwrap();
    let g = [1.0f32; 3];
    assert_eq!(server_code(c.step(&s, &[("p", TensorRef::vec_f32(&g))], &StepOptions::new().worker("a"))), ErrorCode::Timeout);
    let info = c.info(&s, None).unwrap();
    assert_eq!((info.steps, info.workers.unwrap().round_pushes), (0, Some(0)));
    assert_eq!(c.pull(&s, None).unwrap()["p"].to_f32().unwrap(), p);
}

/// With the pushes a, b, b, b, a, a's second push is 3 steps stale and b's
/// first 1. A pull as a worker makes it fresh; a push whose reply carries
/// no parameters does not.
#[test]
fn async_staleness() {
    let d = Daemon::start();
    let mut c = client(&d);
    let s = c.open("async", "sgd", &OpenOptions::new().hparam("lr", 0.25).workers(Workers::asynchronous())).unwrap().session;
    c.join(&s, "a").unwrap();
    let j = c.join(&s, "b").unwrap();
    assert_eq!((j.rank, j.workers.settings.mode), (1, WorkersMode::Async));
    assert_eq!(j.workers.round_pushes, None);
    c.register(&s, &[("p", TensorRef::vec_f32(&[0.0, 0.0]))]).unwrap();
    let g = [1.0f32, -1.0];
    let push = |c: &mut Client, w: &str, ret: bool| {
        c.step(&s, &[("p", TensorRef::vec_f32(&g))], &StepOptions::new().worker(w).return_params(ret)).unwrap()
    };
    let mut seen = Vec::new();
    for (i, w) in ["a", "b", "b", "b", "a", "a"].into_iter().enumerate() {
        let r = push(&mut c, w, true);
        assert_eq!((r.steps, r.worker.as_deref(), r.combined), (i as u64 + 1, Some(w), None));
        seen.push((w, r.staleness.expect("staleness")));
    }
    assert_eq!(seen, [("a", 0), ("b", 1), ("b", 0), ("b", 0), ("a", 3), ("a", 0)]);
    push(&mut c, "b", true);
    c.pull_as_worker(&s, "a", Some(&["p"])).unwrap();
    assert_eq!(push(&mut c, "a", true).staleness, Some(0), "after a pull as a");
    push(&mut c, "a", false);
    let r = push(&mut c, "a", true);
    assert_eq!((r.staleness, r.pushes), (Some(1), Some(6)), "after a push without the parameters");
    let info = c.info(&s, None).unwrap().workers.unwrap();
    let (a, b) = (info.member("a").unwrap(), info.member("b").unwrap());
    assert_eq!((a.rank, a.pushes, a.waiting, b.rank, b.pushes), (0, 6, false, 1, 4));
    let left = c.leave(&s, "a").unwrap();
    assert_eq!(left.steps, 10);
    assert_eq!(left.workers.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["b"]);
}

/// With max_staleness 1, a worker two pushes ahead of the slowest waits
/// until the slowest pushes; its reply says so.
#[test]
fn bounded_worker_waits() {
    let d = Daemon::start();
    let mut c = client(&d);
    let s = c
        .open("b", "sgd", &OpenOptions::new().hparam("lr", 0.25).workers(Workers::bounded(1).timeout_ms(20_000)))
        .unwrap()
        .session;
    c.join(&s, "fast").unwrap();
    c.join(&s, "slow").unwrap();
    c.register(&s, &[("p", TensorRef::vec_f32(&[0.0]))]).unwrap();
    let g = [1.0f32];
    for i in 0..2 {
        let r = c.step(&s, &[("p", TensorRef::vec_f32(&g))], &StepOptions::new().worker("fast")).unwrap();
        assert_eq!((r.lead, r.waited), (Some(i), Some(false)), "fast's push {}", i + 1);
    }
    let (url, s2) = (d.url.clone(), s.clone());
    let third = thread::spawn(move || {
        let mut fc = Client::connect_timeout(&url, Duration::from_secs(60)).expect("connect");
        fc.step(&s2, &[("p", TensorRef::vec_f32(&[1.0]))], &StepOptions::new().worker("fast"))
    });
    wait_until("fast's third push waiting", || c.info(&s, None).unwrap().workers.unwrap().member("fast").unwrap().waiting);
    c.step(&s, &[("p", TensorRef::vec_f32(&g))], &StepOptions::new().worker("slow")).unwrap();
    let r = third.join().unwrap().unwrap();
    assert_eq!((r.waited, r.lead, r.pushes), (Some(true), Some(1), Some(3)));
}

/// Join on a plain session, pushes by no worker or an unknown one, and
/// settings that do not fit the mode.
#[test]
fn worker_refusals() {
    let d = Daemon::start();
    let mut c = client(&d);
    let plain = c.open("plain", "sgd", &OpenOptions::new().hparam("lr", 0.1)).unwrap().session;
    assert_eq!(server_code(c.join(&plain, "a")), ErrorCode::BadRequest);

    let s = c.open("w", "sgd", &OpenOptions::new().hparam("lr", 0.1).workers(Workers::asynchronous())).unwrap().session;
    c.join(&s, "a").unwrap();
    c.register(&s, &[("p", TensorRef::vec_f32(&[0.0]))]).unwrap();
    let g = [1.0f32];
    let grads = [("p", TensorRef::vec_f32(&g))];
    assert_eq!(server_code(c.step(&s, &grads, &StepOptions::new().worker("nobody"))), ErrorCode::UnknownWorker);
    assert_eq!(server_code(c.step(&s, &grads, &StepOptions::new())), ErrorCode::BadRequest);
    assert_eq!(server_code(c.pull_as_worker(&s, "nobody", None)), ErrorCode::UnknownWorker);
    assert_eq!(server_code(c.leave(&s, "nobody")), ErrorCode::UnknownWorker);
    assert_eq!(c.info(&s, None).unwrap().steps, 0, "refused pushes were applied");
    for (i, w) in [
        Workers::new(WorkersMode::Sync),
        Workers::asynchronous().count(2),
        Workers::bounded(1).reduce(Reduce::Sum),
        Workers::sync(2).max_staleness(1),
    ]
    .into_iter()
    .enumerate()
    {
        let r = c.open(&format!("bad{i}"), "sgd", &OpenOptions::new().workers(w));
        assert_eq!(server_code(r), ErrorCode::BadRequest, "{w:?}");
    }
}
