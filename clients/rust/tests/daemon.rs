//! The client against the real daemon ($OPTIMD_BIN), one daemon per test.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::Daemon;
use optimd::*;

fn client(d: &Daemon) -> Client {
    Client::connect_timeout(&d.url, Duration::from_secs(60)).expect("connect")
}

fn server_code(r: Result<impl std::fmt::Debug>) -> ErrorCode {
    match r {
        Err(e @ Error::Server { .. }) => e.code().expect("a known code"),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn scenario_open_register_step_pull_bad_token_close() {
    let d = Daemon::start();
    let mut c = client(&d);

    let h = c.hello(Some("rust-test")).unwrap();
    assert_eq!(h.server, "optimd");
    assert_eq!(h.protocol, 1);
    assert!(h.max_message > 0);

    let opened = c.open("e2e", "adamw", &OpenOptions::new().hparam("lr", 0.01)).unwrap();
    assert_eq!(opened.session.name, "e2e");
    assert_eq!(opened.session.token.len(), 32);
    assert_eq!(opened.lr, 0.01);
    let s = opened.session;

    let w = [1.0f32, -2.0, 3.0, 0.5, -0.25, 4.0];
    let b = [0.5f64, -0.5];
    let n = c
        .register(&s, &[("w", TensorRef::f32(&[2, 3], &w).unwrap()), ("b", TensorRef::f64(&[2], &b).unwrap())])
        .unwrap();
    assert_eq!(n, 2);

    let gw = [0.1f32, 0.2, -0.3, 0.4, -0.5, 0.6];
    let r = c.step(&s, &[("w", TensorRef::f32(&[2, 3], &gw).unwrap())], &StepOptions::new()).unwrap();
    assert_eq!(r.steps, 1);
    assert!(!r.duplicate);
    assert_eq!(r.lr, 0.01);
    let params = r.params.expect("params returned by default");
    assert_eq!(params.len(), 1, "only the stepped parameter comes back");
    let new_w = params["w"].to_f32().unwrap();
    assert_eq!(params["w"].shape(), &[2, 3]);
    // Adam's first step moves each element by about lr against its
    // gradient's sign (plus the decoupled decay).
    for i in 0..6 {
        let moved = new_w[i] - w[i];
        assert!(moved * gw[i] < 0.0, "element {i} moved {moved} with gradient {}", gw[i]);
    }

    let pulled = c.pull(&s, None).unwrap();
    assert_eq!(pulled.len(), 2);
    assert_eq!(pulled["w"], params["w"]);
    assert_eq!(pulled["b"].to_f64().unwrap(), b, "b took no step");
    let only_b = c.pull(&s, Some(&["b"])).unwrap();
    assert_eq!(only_b.keys().collect::<Vec<_>>(), ["b"]);

    let forged = Session::new("e2e", "0".repeat(32));
    let e = c.pull(&forged, None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadToken), "{e}");
    match &e {
        Error::Server { code, name, .. } => {
            assert_eq!(*code, 21);
            assert_eq!(name, "BAD_TOKEN");
        }
        _ => unreachable!(),
    }
    // A refused request leaves the connection usable.
    assert_eq!(c.pull(&s, Some(&[])).unwrap().len(), 0);

    c.close_session(&s).unwrap();
    assert_eq!(server_code(c.info(&s, None)), ErrorCode::UnknownSession);
    drop(c);
    d.stop();
}

/// torch.optim.AdamW (1.13) in float64, written from the paper's update:
/// decay, moments, bias corrections.
struct AdamW64 {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
    t: i32,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl AdamW64 {
    fn step(&mut self, p: &mut [f64], g: &[f64]) {
        self.t += 1;
        let bc1 = 1.0 - self.b1.powi(self.t);
        let bc2 = 1.0 - self.b2.powi(self.t);
        for i in 0..p.len() {
            p[i] *= 1.0 - self.lr * self.wd;
            self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * g[i];
            self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * g[i] * g[i];
            let denom = self.v[i].sqrt() / bc2.sqrt() + self.eps;
            p[i] -= self.lr / bc1 * self.m[i] / denom;
        }
    }
}

fn ulp32(x: f64) -> f64 {
    let f = x.abs() as f32;
    (f32::from_bits(f.to_bits() + 1) - f) as f64
}

#[test]
fn adamw_matches_an_independent_float64_computation() {
    let d = Daemon::start();
    let mut c = client(&d);
    let (lr, b1, b2, eps, wd) = (0.05, 0.8, 0.95, 1e-6, 0.1);
    let opts = OpenOptions::new()
        .hparam("lr", lr)
        .hparam("beta1", b1)
        .hparam("beta2", b2)
        .hparam("eps", eps)
        .hparam("weight_decay", wd);
    let s = c.open("adamw64", "adamw", &opts).unwrap().session;

    let w0: Vec<f32> = vec![1.5, -0.75, 0.3, 2.0, -1.25, 0.05, 0.9, -3.0];
    c.register(&s, &[("w", TensorRef::vec_f32(&w0))]).unwrap();
    let mut reference = AdamW64 { lr, b1, b2, eps, wd, t: 0, m: vec![0.0; 8], v: vec![0.0; 8] };
    let mut p64: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
    let mut w = w0.clone();
    let mut worst = 0.0f64;
    for k in 0..6 {
        // Gradients of varied size and sign, different every step.
        let g: Vec<f32> = (0..8).map(|i| ((i as f32 + 1.0) * 0.37 + k as f32 * 0.91).sin() * (1.0 + i as f32)).collect();
        let r = c.step(&s, &[("w", TensorRef::vec_f32(&g))], &StepOptions::new()).unwrap();
        assert_eq!(r.steps, k + 1);
        w = r.params.unwrap()["w"].to_f32().unwrap();
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        let before = p64.clone();
        reference.step(&mut p64, &g64);
        for i in 0..8 {
            // float32 rounds relative to the operands: where the update
            // nearly cancels the parameter, the result's own ulp is far finer
            // than the error the operands carry.
            let scale = before[i].abs().max(p64[i].abs());
            let err = (w[i] as f64 - p64[i]).abs() / ulp32(scale);
            worst = worst.max(err);
            assert!(err <= 4.0, "step {} element {i}: daemon {} vs float64 {} ({err:.2} ulp)", k + 1, w[i], p64[i]);
        }
    }
    // The parameters did move: a daemon that ignored steps would fail above,
    // but make the point explicit.
    assert!(w.iter().zip(&w0).all(|(a, b)| a != b));
    eprintln!("adamw vs float64: worst error {worst:.2} float32 ulp over 6 steps");

    // state: the moments the daemon holds are the reference's, in f32.
    let st = c.state(&s, Some(&["w"])).unwrap();
    let m = st["w"]["exp_avg"].to_f32().unwrap();
    let v = st["w"]["exp_avg_sq"].to_f32().unwrap();
    for i in 0..8 {
        assert!(((m[i] as f64) - reference.m[i]).abs() <= 8.0 * ulp32(reference.m[i]), "exp_avg[{i}]");
        assert!(((v[i] as f64) - reference.v[i]).abs() <= 8.0 * ulp32(reference.v[i]), "exp_avg_sq[{i}]");
    }
    drop(c);
    d.stop();
}

#[test]
fn every_other_op() {
    let d = Daemon::start();
    let mut c = client(&d);

    let plugins = c.plugins().unwrap();
    let adamw = plugins.iter().find(|p| p.id == "adamw").expect("adamw loaded");
    assert_eq!(adamw.kind, "optimizer");
    let lr_decl = adamw.hparams.iter().find(|h| h.key == "lr").expect("lr declared");
    assert_eq!(lr_decl.kind, "float");
    assert!(lr_decl.mutable);
    assert_eq!(lr_decl.default, Some(HValue::Float(1e-3)));
    assert!(adamw.dtypes.as_ref().unwrap().iter().any(|d| d == "f32"));
    assert!(adamw.slots.as_ref().unwrap().iter().any(|s| s.key == "exp_avg"));
    let step_sched = plugins.iter().find(|p| p.id == "step").expect("step scheduler loaded");
    assert_eq!(step_sched.kind, "scheduler");
    assert!(step_sched.slots.is_none() && step_sched.dtypes.is_none());
    let step_size = step_sched.hparams.iter().find(|h| h.key == "step_size").unwrap();
    assert!(step_size.required && step_size.default.is_none());
    // Factored slots: the shapes protocol.md added for Adafactor.
    let adafactor = plugins.iter().find(|p| p.id == "adafactor").expect("adafactor loaded");
    let kinds: Vec<SlotShape<'_>> = adafactor.slots.as_ref().unwrap().iter().map(SlotDecl::shape_kind).collect();
    assert!(kinds.contains(&SlotShape::Rows) && kinds.contains(&SlotShape::Cols), "{kinds:?}");

    // open with every optional key.
    let opts = OpenOptions::new()
        .hparam("lr", 0.5)
        .hparam("momentum", 0.9)
        .scheduler("step")
        .sched_hparam("step_size", 2)
        .sched_hparam("gamma", 0.5)
        .durability(Durability::Always);
    let s = c.open("ops", "sgd", &opts).unwrap().session;
    c.register(&s, &[("x", TensorRef::vec_f64(&[1.0, 2.0]))]).unwrap();

    let info = c.attach(&s).unwrap();
    assert_eq!(info.session, "ops");
    assert_eq!(info.durability, Durability::Always);
    assert_eq!(info.optimizer, "sgd");
    assert_eq!(info.scheduler.as_deref(), Some("step"));
    assert_eq!(info.hparams["momentum"], HValue::Float(0.9));
    assert_eq!(info.sched_hparams["step_size"], HValue::Int(2));
    assert_eq!(info.base_lr, 0.5);
    assert_eq!(info.client_seq, None);
    assert_eq!(
        info.params,
        vec![ParamInfo { name: "x".into(), group: "default".into(), dtype: Dtype::F64, shape: vec![2], steps: 0 }]
    );
    assert_eq!(info.groups.len(), 1, "a session opened without groups has only the default one");
    assert_eq!(info.groups[0].name, "default");
    assert_eq!((info.groups[0].base_lr, info.groups[0].params), (0.5, 1));
    assert_eq!(server_code(c.attach(&Session::new("ops", "f".repeat(32)))), ErrorCode::BadToken);

    // The schedule: lr 0.5, 0.5, then 0.25 from step 3 on.
    let g = [1.0f64, 1.0];
    let mut lrs = Vec::new();
    for _ in 0..3 {
        let r = c.step(&s, &[("x", TensorRef::vec_f64(&g))], &StepOptions::new().return_params(false)).unwrap();
        assert!(r.params.is_none(), "return: false leaves params out");
        lrs.push(r.lr);
    }
    assert_eq!(lrs, [0.5, 0.5, 0.25]);

    let hp = c.hparams(&s).unwrap();
    assert_eq!(hp.lr, 0.25);
    assert_eq!(hp.base_lr, 0.5);
    let mut change = Hparams::new();
    change.insert("momentum".into(), HValue::Float(0.0));
    let hp = c.set_hparams(&s, &change).unwrap();
    assert_eq!(hp.hparams["momentum"], HValue::Float(0.0));
    change.insert("nesterov".into(), HValue::Bool(true));
    let e = c.set_hparams(&s, &change).unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::NotMutable | ErrorCode::BadHparam)), "{e}");

    let sessions = c.sessions().unwrap();
    let mine = sessions.iter().find(|x| x.session == "ops").expect("listed");
    assert_eq!((mine.optimizer.as_str(), mine.scheduler.as_deref(), mine.params, mine.steps), ("sgd", Some("step"), 1, 3));

    let st = c.state(&s, None).unwrap();
    assert_eq!(st["x"]["momentum_buffer"].shape(), &[2]);

    let info = c.info(&s, Some("nobody")).unwrap();
    assert_eq!(info.client_seq, Some(0));
    assert_eq!(info.steps, 3);
    assert_eq!(info.params[0].steps, 3);

    // Refusals carry their codes.
    assert_eq!(server_code(c.open("ops", "sgd", &OpenOptions::new().hparam("lr", 0.1))), ErrorCode::SessionExists);
    assert_eq!(server_code(c.open("other", "nosuch", &OpenOptions::new())), ErrorCode::UnknownPlugin);
    assert_eq!(server_code(c.open("other", "step", &OpenOptions::new())), ErrorCode::WrongKind);
    assert_eq!(
        server_code(c.open("other", "sgd", &OpenOptions::new().hparam("lr", 0.1).hparam("nope", 1.0))),
        ErrorCode::UnknownHparam
    );
    assert_eq!(server_code(c.open("other", "sgd", &OpenOptions::new().hparam("lr", -1.0))), ErrorCode::BadHparam);
    assert_eq!(server_code(c.register(&s, &[("x", TensorRef::vec_f64(&g))])), ErrorCode::ParamExists);
    assert_eq!(server_code(c.step(&s, &[("x", TensorRef::vec_f64(&[1.0]))], &StepOptions::new())), ErrorCode::BadTensor);
    assert_eq!(
        server_code(c.step(&s, &[("x", TensorRef::vec_f64(&[f64::NAN, 0.0]))], &StepOptions::new())),
        ErrorCode::Nonfinite
    );
    assert_eq!(server_code(c.pull(&s, Some(&["nope"]))), ErrorCode::UnknownParam);

    c.close_session(&s).unwrap();
    assert!(c.sessions().unwrap().iter().all(|x| x.session != "ops"));
    drop(c);
    d.stop();
}

#[test]
fn sequenced_step_retry_is_a_duplicate() {
    let d = Daemon::start();
    let mut c = client(&d);
    let s = c.open("seq", "adam", &OpenOptions::new().hparam("lr", 0.1)).unwrap().session;
    c.register(&s, &[("w", TensorRef::vec_f32(&[1.0, 2.0, 3.0]))]).unwrap();
    let g = [0.5f32, -0.5, 1.0];
    let opts = StepOptions::new().seq("worker-0", 7);
    let first = c.step(&s, &[("w", TensorRef::vec_f32(&g))], &opts).unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.steps, 1);

    // The retry of a step whose reply was lost: the same seq again, on a
    // fresh connection as a client that timed out would make.
    c.disconnect();
    let again = c.step(&s, &[("w", TensorRef::vec_f32(&g))], &opts).unwrap();
    assert!(again.duplicate, "a repeated seq must not be applied twice");
    assert_eq!(again.steps, first.steps);
    assert_eq!(again.lr, first.lr);
    assert_eq!(again.params, first.params, "the duplicate reply carries the current values");
    assert_eq!(c.info(&s, None).unwrap().steps, 1);
    assert_eq!(c.info(&s, Some("worker-0")).unwrap().client_seq, Some(7));

    // A higher seq is applied; another client's numbering is its own.
    assert!(!c.step(&s, &[("w", TensorRef::vec_f32(&g))], &StepOptions::new().seq("worker-0", 9)).unwrap().duplicate);
    assert!(!c.step(&s, &[("w", TensorRef::vec_f32(&g))], &StepOptions::new().seq("worker-1", 1)).unwrap().duplicate);
    assert_eq!(c.info(&s, None).unwrap().steps, 3);
    drop(c);
    d.stop();
}

#[test]
fn export_import_roundtrip() {
    let d = Daemon::start();
    let mut c = client(&d);
    let s = c.open("src", "adamw", &OpenOptions::new().hparam("lr", 0.02)).unwrap().session;
    let w: Vec<f32> = (0..100).map(|i| i as f32 * 0.01).collect();
    c.register(&s, &[("w", TensorRef::vec_f32(&w))]).unwrap();
    let g = vec![0.3f32; 100];
    for seq in 1..=3 {
        c.step(&s, &[("w", TensorRef::vec_f32(&g))], &StepOptions::new().seq("a", seq)).unwrap();
    }
    let snap = c.export(&s).unwrap();
    assert!(snap.len() > 800, "a snapshot holds at least w and its two moments");

    let imp = c.import(&snap, &ImportOptions { session: Some("dst".into()), durability: Some(Durability::None) }).unwrap();
    assert_eq!(imp.session.name, "dst");
    assert_eq!(imp.steps, 3);
    assert_ne!(imp.session.token, s.token, "import gives a new token");
    let t = imp.session;
    assert_eq!(c.pull(&t, None).unwrap(), c.pull(&s, None).unwrap());
    assert_eq!(c.state(&t, None).unwrap(), c.state(&s, None).unwrap());
    let info = c.info(&t, Some("a")).unwrap();
    assert_eq!(info.client_seq, Some(3), "sequence numbers travel with the snapshot");
    assert_eq!(info.durability, Durability::None);
    assert_eq!(info.hparams["lr"], HValue::Float(0.02));
    assert_eq!(server_code(c.pull(&Session::new("dst", s.token.clone()), None)), ErrorCode::BadToken);

    // Both go on identically.
    let a = c.step(&s, &[("w", TensorRef::vec_f32(&g))], &StepOptions::new()).unwrap();
    let b = c.step(&t, &[("w", TensorRef::vec_f32(&g))], &StepOptions::new()).unwrap();
    assert_eq!(a.params, b.params);

    assert_eq!(server_code(c.import(&snap, &ImportOptions::default())), ErrorCode::SessionExists);
    assert_eq!(server_code(c.import(b"not a snapshot", &ImportOptions { session: Some("x".into()), durability: None })), ErrorCode::BadRequest);
    drop(c);
    d.stop();
}

#[test]
fn large_tensors_and_the_ipc_transport() {
    let sock = common::scratch_dir("ipc").join("optimd.sock");
    let ipc_url = format!("ipc://{}", sock.display());
    let d = Daemon::start_with(&["--listen", &ipc_url]);
    let mut c = Client::connect_timeout(&ipc_url, Duration::from_secs(60)).expect("ipc connect");
    assert_eq!(c.hello(None).unwrap().server, "optimd");
    let s = c.open("big", "sgd", &OpenOptions::new().hparam("lr", 0.5)).unwrap().session;
    // 3 MiB each way: several reads and a vectored write of borrowed data.
    let n = 3 << 18;
    let w: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    c.register(&s, &[("w", TensorRef::vec_f32(&w))]).unwrap();
    let g = vec![2.0f32; n];
    let r = c.step(&s, &[("w", TensorRef::vec_f32(&g))], &StepOptions::new()).unwrap();
    let got = r.params.unwrap()["w"].to_f32().unwrap();
    for (i, (&a, &b)) in got.iter().zip(&w).enumerate() {
        assert_eq!(a, b - 1.0, "element {i}");
    }
    // The same session over TCP: one daemon, two transports.
    let mut t = Client::connect(&d.url).unwrap();
    let pulled = t.pull(&s, None).unwrap();
    assert_eq!(pulled["w"].to_f32().unwrap(), got);
    // A reply over the client's limit is refused, not allocated.
    t.set_max_reply(1 << 20);
    assert!(matches!(t.pull(&s, None), Err(Error::Protocol(_))));
    drop((c, t));
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
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let prefix = format!("{name} ");
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line[prefix.len()..].trim().parse().unwrap()
}

/// Steps with large tensors (f32 and f64, of sizes that shift each other),
/// on sessions whose names of 1 to 16 bytes bring every pad length, give
/// the exact SGD result, and the daemon copies none of them to align them
/// (`optimd_unaligned_gradients_total` stays 0); small tensors beside them
/// are right too.
#[test]
fn large_tensors_at_every_pad_length_are_read_in_place() {
    let d = Daemon::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let mut c = client(&d);
    let sizes: BTreeMap<&str, (usize, Dtype)> = [
        ("a", (16385, Dtype::F32)),
        ("c", (100003, Dtype::F64)),
        ("e", (65536, Dtype::F32)),
        ("b", (3, Dtype::F32)),
        ("d", (16383, Dtype::F32)),
    ]
    .into_iter()
    .collect();
    let init = |i: usize| (i % 1000) as f64 - 500.0;
    let grad = |k: usize, i: usize| ((i + k) % 7) as f64 - 3.0;
    let make = |names: &[&str], f: &dyn Fn(usize) -> f64| -> Vec<Tensor> {
        names
            .iter()
            .map(|name| {
                let (n, dtype) = sizes[name];
                let v: Vec<f64> = (0..n).map(f).collect();
                match dtype {
                    Dtype::F32 => Tensor::from_f32(&[n as u64], &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
                    Dtype::F64 => Tensor::from_f64(&[n as u64], &v),
                }
                .unwrap()
            })
            .collect()
    };
    let mut run = |session: &str, names: &[&str], steps: usize| {
        let s = c.open(session, "sgd", &OpenOptions::new().hparam("lr", 0.5)).unwrap().session;
        let params = make(names, &init);
        let refs: Vec<(&str, TensorRef)> = names.iter().copied().zip(params.iter().map(|t| t.as_ref())).collect();
        c.register(&s, &refs).unwrap();
        for k in 1..=steps {
            let grads = make(names, &|i| grad(k, i));
            let refs: Vec<(&str, TensorRef)> = names.iter().copied().zip(grads.iter().map(|t| t.as_ref())).collect();
            let r = c.step(&s, &refs, &StepOptions::new()).unwrap();
            let params = r.params.unwrap();
            for name in names {
                let t = &params[*name];
                let got = match t.dtype() {
                    Dtype::F32 => t.to_f32().unwrap().into_iter().map(f64::from).collect(),
                    Dtype::F64 => t.to_f64().unwrap(),
                };
                for (i, &g) in got.iter().enumerate() {
                    let want = init(i) - (1..=k).map(|j| 0.5 * grad(j, i)).sum::<f64>();
                    assert_eq!(g, want, "{session} step {k}: {name}[{i}]");
                }
            }
        }
    };
    for n in 1..=16 {
        run(&"p".repeat(n), &["a", "c", "e"], 2);
    }
    assert_eq!(scrape(&d, "optimd_unaligned_gradients_total"), 0.0, "large gradients copied to be aligned");
    run("mixed", &["a", "b", "c", "d", "e"], 3);
    drop(c);
    d.stop();
}

/// A REP peer that greets correctly and then never answers: the call must
/// give up at its timeout.
#[test]
fn a_call_times_out_and_the_client_recovers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&[0, b'S', b'P', 0, 0, 49, 0, 0]).unwrap();
        let mut greeting = [0u8; 8];
        conn.read_exact(&mut greeting).unwrap();
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink); // until the client hangs up
        greeting
    });
    let mut c = Client::connect_timeout(&url, Duration::from_secs(30)).unwrap();
    let e = c.with_timeout(Duration::from_millis(300)).hello(None).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(c.timeout(), Duration::from_secs(30), "the guard restores the timeout");
    drop(c);
    let greeting = server.join().unwrap();
    assert_eq!(greeting, [0, b'S', b'P', 0, 0, 48, 0, 0], "the client greets as REQ0");

    // A peer that is not REP is refused at connect.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&[0, b'S', b'P', 0, 0, 48, 0, 0]).unwrap();
        let mut b = [0u8; 8];
        let _ = conn.read_exact(&mut b);
    });
    assert!(matches!(Client::connect(&url), Err(Error::Protocol(_))));
    server.join().unwrap();

    assert!(matches!(Client::connect("ws://127.0.0.1:1/x"), Err(Error::Invalid(_))));
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

fn lrs(pairs: &[(&str, f64)]) -> GroupLrs {
    pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
}

/// Two parameter groups: each parameter moves by its own group's lr, and
/// info, step and set_hparams report the groups apart.
#[test]
fn two_groups_have_their_own_lr() {
    let d = Daemon::start();
    let mut c = client(&d);
    // The head group halves its lr after every step; the default group
    // has no scheduler.
    let opts = OpenOptions::new()
        .hparam("lr", 0.1)
        .group(GroupSpec::new("head").hparam("lr", 0.5).scheduler("step").sched_hparam("step_size", 1).sched_hparam("gamma", 0.5));
    let opened = c.open("grouped", "sgd", &opts).unwrap();
    assert!(!opened.existing);
    assert_eq!(opened.lr, 0.1, "open reports the default group's lr");
    let s = opened.session;
    c.register(&s, &[("w", TensorRef::vec_f64(&[1.0, 2.0]))]).unwrap();
    assert_eq!(c.register_in_group(&s, "head", &[("h", TensorRef::vec_f64(&[3.0, -1.0]))]).unwrap(), 1);

    let info = c.info(&s, None).unwrap();
    let names: Vec<&str> = info.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["default", "head"]);
    let head = info.group("head").unwrap();
    assert_eq!((head.scheduler.as_deref(), head.base_lr, head.lr, head.params), (Some("step"), 0.5, 0.5, 1));
    assert_eq!(head.hparams["lr"], HValue::Float(0.5));
    let default = info.group("default").unwrap();
    assert_eq!((default.scheduler.as_deref(), default.lr, default.params), (None, 0.1, 1));
    assert_eq!((info.lr, info.scheduler.as_deref()), (0.1, None), "the top level is the default group");
    let groups_of: Vec<(&str, &str)> = info.params.iter().map(|p| (p.name.as_str(), p.group.as_str())).collect();
    assert_eq!(groups_of, [("w", "default"), ("h", "head")]);

    // Gradients whose products with the lrs are exact, so the expected
    // values are too.
    let (gw, gh) = ([2.0f64, -4.0], [0.5f64, 1.0]);
    let grads = [("w", TensorRef::vec_f64(&gw)), ("h", TensorRef::vec_f64(&gh))];
    let r = c.step(&s, &grads, &StepOptions::new()).unwrap();
    assert_eq!(r.lrs, Some(lrs(&[("default", 0.1), ("head", 0.5)])));
    assert_eq!(r.next_lrs, Some(lrs(&[("default", 0.1), ("head", 0.25)])));
    assert_eq!((r.lr_of("head"), r.next_lr_of("head"), r.lr_of("nope")), (Some(0.5), Some(0.25), None));
    assert_eq!(r.grad_norm, None, "no clip_norm, no norm");
    let p = r.params.unwrap();
    assert_eq!(p["w"].to_f64().unwrap(), [1.0 - 0.1 * 2.0, 2.0 + 0.1 * 4.0]);
    assert_eq!(p["h"].to_f64().unwrap(), [3.0 - 0.5 * 0.5, -1.0 - 0.5 * 1.0]);
    assert_eq!(c.info(&s, None).unwrap().group("head").unwrap().lr, 0.25);

    // One group's hyperparameters, then every group's.
    let mut lr = Hparams::new();
    lr.insert("lr".into(), HValue::Float(2.0));
    let hp = c.set_group_hparams(&s, "head", &lr).unwrap();
    assert_eq!((hp.group("head").unwrap().lr, hp.group("default").unwrap().lr), (2.0, 0.1));
    let mut momentum = Hparams::new();
    momentum.insert("momentum".into(), HValue::Float(0.25));
    let hp = c.set_hparams(&s, &momentum).unwrap();
    for g in &hp.groups {
        assert_eq!(g.hparams["momentum"], HValue::Float(0.25), "group {}", g.name);
    }
    assert_eq!(hp.group("head").unwrap().lr, 2.0, "keys not given are kept");
    let r = c.step(&s, &grads, &StepOptions::new().return_params(false)).unwrap();
    assert_eq!(r.lrs, Some(lrs(&[("default", 0.1), ("head", 2.0)])));

    assert_eq!(server_code(c.set_group_hparams(&s, "nope", &lr)), ErrorCode::BadRequest);
    assert_eq!(server_code(c.register_in_group(&s, "nope", &[("z", TensorRef::vec_f64(&[0.0]))])), ErrorCode::BadRequest);
    drop(c);
    d.stop();
}

/// Clipping by norm (whole step and per group) and by value, against the
/// geometry: a gradient clipped to norm 1 is its direction.
#[test]
fn clipped_steps_report_the_gradient_norm() {
    let d = Daemon::start();
    let mut c = client(&d);
    let opts = OpenOptions::new().hparam("lr", 1.0).group(GroupSpec::new("b"));
    let s = c.open("clipped", "sgd", &opts).unwrap().session;
    c.register(&s, &[("w", TensorRef::vec_f32(&[0.0, 0.0]))]).unwrap();
    c.register_in_group(&s, "b", &[("v", TensorRef::vec_f32(&[0.0, 0.0]))]).unwrap();
    let (gw, gv) = ([3.0f32, 4.0], [0.0f32, 12.0]);
    let grads = [("w", TensorRef::vec_f32(&gw)), ("v", TensorRef::vec_f32(&gv))];

    // Over the whole step: |(3, 4, 0, 12)| = 13, scaled to norm 1; SGD with
    // lr 1 then moves each parameter by minus its clipped gradient.
    let r = c.step(&s, &grads, &StepOptions::new().clip_norm(ClipNorm::new(1.0))).unwrap();
    match r.grad_norm {
        Some(GradNorm::Total(n)) => assert!((n - 13.0).abs() < 1e-5, "grad_norm {n}"),
        other => panic!("expected grad_norm, got {other:?}"),
    }
    let p = r.params.unwrap();
    let (w1, v1) = (p["w"].to_f32().unwrap(), p["v"].to_f32().unwrap());
    assert_close(&w1, &[-3.0 / 13.0, -4.0 / 13.0], 1e-6, "w after a clip to 1 over the step");
    assert_close(&v1, &[0.0, -12.0 / 13.0], 1e-6, "v after a clip to 1 over the step");

    // Per group: 5 and 12, each group scaled to norm 1 on its own.
    let per_group = StepOptions::new().clip_norm(ClipNorm::new(1.0).norm_type(2.0).per_group(true));
    let r = c.step(&s, &grads, &per_group).unwrap();
    match &r.grad_norm {
        Some(GradNorm::PerGroup(m)) => {
            assert_eq!(m.keys().collect::<Vec<_>>(), ["b", "default"]);
            assert!((m["default"] - 5.0).abs() < 1e-5 && (m["b"] - 12.0).abs() < 1e-5, "{m:?}");
        }
        other => panic!("expected grad_norms, got {other:?}"),
    }
    let p = r.params.unwrap();
    let (w2, v2) = (p["w"].to_f32().unwrap(), p["v"].to_f32().unwrap());
    assert_close(&w2, &[w1[0] as f64 - 0.6, w1[1] as f64 - 0.8], 1e-6, "w after a per-group clip");
    assert_close(&v2, &[0.0, v1[1] as f64 - 1.0], 1e-6, "v after a per-group clip");

    // By value: (3, -4) clamped to ±2; no norm was asked for.
    let gw3 = [3.0f32, -4.0];
    let r = c.step(&s, &[("w", TensorRef::vec_f32(&gw3))], &StepOptions::new().clip_value(2.0)).unwrap();
    assert_eq!(r.grad_norm, None);
    let w3 = r.params.unwrap()["w"].to_f32().unwrap();
    assert_close(&w3, &[w2[0] as f64 - 2.0, w2[1] as f64 + 2.0], 1e-6, "w after a clip by value");

    // Both: values are clamped first, so the norm reported is |(2, -2)|,
    // under max_norm: nothing is scaled.
    let both = StepOptions::new().clip_value(2.0).clip_norm(ClipNorm::new(100.0));
    let r = c.step(&s, &[("w", TensorRef::vec_f32(&gw3))], &both).unwrap();
    match r.grad_norm {
        Some(GradNorm::Total(n)) => assert!((n - 8f64.sqrt()).abs() < 1e-5, "grad_norm {n}"),
        other => panic!("expected grad_norm, got {other:?}"),
    }
    let w4 = r.params.unwrap()["w"].to_f32().unwrap();
    assert_close(&w4, &[w3[0] as f64 - 2.0, w3[1] as f64 + 2.0], 1e-6, "w after both clips");

    assert_eq!(
        server_code(c.step(&s, &[("w", TensorRef::vec_f32(&gw3))], &StepOptions::new().clip_value(-1.0))),
        ErrorCode::BadRequest
    );
    drop(c);
    d.stop();
}

/// `plateau` (torch's ReduceLROnPlateau) with patience 0 and factor 0.5:
/// one metric worse than the best so far halves the lr.
#[test]
fn observe_drives_the_plateau_scheduler() {
    let d = Daemon::start();
    let mut c = client(&d);
    let opts = OpenOptions::new()
        .hparam("lr", 1.0)
        .scheduler("plateau")
        .sched_hparam("patience", 0)
        .sched_hparam("factor", 0.5);
    let s = c.open("plateau", "sgd", &opts).unwrap().session;
    c.register(&s, &[("w", TensorRef::vec_f64(&[1.0]))]).unwrap();

    let o = c.observe(&s, 1.0, None).unwrap();
    assert_eq!((o.lr, &o.lrs), (1.0, &lrs(&[("default", 1.0)])), "the first metric is the best so far");
    let o = c.observe(&s, 2.0, None).unwrap();
    assert_eq!((o.lr, &o.lrs), (0.5, &lrs(&[("default", 0.5)])), "a worse metric halves the lr");
    let o = c.observe(&s, 0.5, None).unwrap();
    assert_eq!(o.lr, 0.5, "a better one keeps it");
    let r = c.step(&s, &[("w", TensorRef::vec_f64(&[1.0]))], &StepOptions::new()).unwrap();
    assert_eq!(r.lr, 0.5, "the step uses the lr observe set");
    assert_eq!(r.params.unwrap()["w"].to_f64().unwrap(), [0.5]);
    assert_eq!(c.info(&s, None).unwrap().lr, 0.5);

    // Only the head group takes metrics here.
    let opts = OpenOptions::new()
        .hparam("lr", 1.0)
        .group(GroupSpec::new("head").scheduler("plateau").sched_hparam("patience", 0).sched_hparam("factor", 0.5));
    let t = c.open("plateau-head", "sgd", &opts).unwrap().session;
    assert_eq!(c.observe(&t, 3.0, Some("head")).unwrap().lr, 1.0);
    let o = c.observe(&t, 4.0, Some("head")).unwrap();
    assert_eq!((o.lr, &o.lrs), (0.5, &lrs(&[("default", 1.0), ("head", 0.5)])));
    let o = c.observe(&t, 5.0, None).unwrap();
    assert_eq!(o.lrs, lrs(&[("default", 1.0), ("head", 0.25)]), "no group named: every metric scheduler");
    assert_eq!(server_code(c.observe(&t, 1.0, Some("default"))), ErrorCode::BadRequest);
    assert_eq!(server_code(c.observe(&t, 1.0, Some("nope"))), ErrorCode::BadRequest);
    drop(c);
    d.stop();
}

/// The open of a lost reply, re-sent with its open_key on a new
/// connection, gets the session the first attempt created.
#[test]
fn a_retried_open_with_its_key_returns_the_same_session() {
    let d = Daemon::start();
    let mut c = client(&d);
    let key = new_open_key();
    assert_eq!(key.len(), 32);
    assert_ne!(key, new_open_key(), "keys are random");
    let opts = OpenOptions::new().hparam("lr", 0.1).open_key(key.clone());
    let first = c.open("keyed", "sgd", &opts).unwrap();
    assert!(!first.existing);
    c.register(&first.session, &[("w", TensorRef::vec_f64(&[1.0]))]).unwrap();
    c.step(&first.session, &[("w", TensorRef::vec_f64(&[1.0]))], &StepOptions::new()).unwrap();

    c.disconnect();
    let again = c.open("keyed", "sgd", &opts).unwrap();
    assert!(again.existing, "the retry is answered with the existing session");
    assert_eq!(again.session, first.session, "same name and token");
    assert_eq!(again.lr, 0.1);
    assert_eq!(c.info(&again.session, None).unwrap().steps, 1, "the session was not opened anew");

    // Anyone else asking for the name still gets SESSION_EXISTS.
    let other = OpenOptions::new().hparam("lr", 0.1).open_key(new_open_key());
    assert_eq!(server_code(c.open("keyed", "sgd", &other)), ErrorCode::SessionExists);
    assert_eq!(server_code(c.open("keyed", "sgd", &OpenOptions::new().hparam("lr", 0.1))), ErrorCode::SessionExists);
    // A key the daemon would refuse is refused before sending.
    for bad in ["too-short", "has a space in it..", &"x".repeat(65)] {
        let e = c.open("other", "sgd", &OpenOptions::new().hparam("lr", 0.1).open_key(bad)).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{bad:?}: {e}");
    }
    assert!(c.sessions().unwrap().iter().all(|x| x.session != "other"));
    drop(c);
    d.stop();
}

/// Lookahead {k 2, alpha 0.5} and a sequential schedule (linear, then
/// exponential from epoch 3): info reports both, every step's lr follows
/// torch's rules computed here, and, in a second session with a fixed lr,
/// the k-th step pulls the parameter back towards its slow weights.
#[test]
fn lookahead_and_a_sequential_schedule() {
    let d = Daemon::start();
    let mut c = client(&d);
    let (base, start_factor, end_factor, total_iters, gamma, milestone) = (0.1, 0.1, 1.0, 3, 0.5, 3u64);
    let la = Lookahead::new(2, 0.5);
    let opts = OpenOptions::new().hparam("lr", base).lookahead(la).sequential(
        vec![
            SchedulerSpec::new("linear").sched_hparam("start_factor", start_factor).sched_hparam("total_iters", total_iters),
            SchedulerSpec::new("exponential").sched_hparam("gamma", gamma),
        ],
        vec![milestone],
    );
    let s = c.open("lookahead-seq", "sgd", &opts).unwrap().session;

    let info = c.info(&s, None).unwrap();
    assert_eq!(info.lookahead, Some(la));
    assert_eq!(info.scheduler.as_deref(), Some(SEQUENTIAL));
    assert_eq!(info.milestones, Some(vec![milestone]));
    let parts = info.schedulers.as_ref().expect("schedulers");
    let ids: Vec<&str> = parts.iter().map(|p| p.scheduler.as_str()).collect();
    assert_eq!(ids, ["linear", "exponential"]);
    assert_eq!(parts[0].sched_hparams["start_factor"], HValue::Float(start_factor));
    assert_eq!(parts[1].sched_hparams["gamma"], HValue::Float(gamma));
    let default = info.group("default").unwrap();
    assert_eq!((&default.schedulers, &default.milestones), (&info.schedulers, &info.milestones));

    // torch 1.13: LinearLR starts at base * start_factor and multiplies by
    // 1 + (end - start) / (total * start + (e - 1) * (end - start)) at
    // epoch e; at the milestone SequentialLR restarts ExponentialLR at its
    // epoch 0 (the base lr), which then multiplies by gamma each epoch.
    let mut want: Vec<f64> = Vec::new();
    for e in 0..5u64 {
        let lr = if e == 0 {
            base * start_factor
        } else if e < milestone {
            let prev = want[e as usize - 1];
            prev * (1.0
                + (end_factor - start_factor)
                    / (total_iters as f64 * start_factor + (e - 1) as f64 * (end_factor - start_factor)))
        } else if e == milestone {
            base
        } else {
            want[e as usize - 1] * gamma
        };
        want.push(lr);
    }
    c.register(&s, &[("w", TensorRef::vec_f64(&[1.0]))]).unwrap();
    let got: Vec<f64> = (0..want.len())
        .map(|_| {
            c.step(&s, &[("w", TensorRef::vec_f64(&[1.0]))], &StepOptions::new().return_params(false)).unwrap().lr
        })
        .collect();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-12 * w, "lrs {got:?}, want {want:?}");
    }

    // Plain SGD, fixed lr: after k steps the parameter is
    // slow + alpha * (fast - slow), slow being its value before step 1.
    let lr = 0.25;
    let s2 = c.open("lookahead-sgd", "sgd", &OpenOptions::new().hparam("lr", lr).lookahead(la)).unwrap().session;
    assert_eq!(c.info(&s2, None).unwrap().schedulers, None);
    let p0 = [1.5f64, -2.0];
    let grads = [[1.0f64, 3.0], [-0.5, 2.0]];
    c.register(&s2, &[("p", TensorRef::vec_f64(&p0))]).unwrap();
    let mut fast = p0;
    let mut p = Vec::new();
    for (i, g) in grads.iter().enumerate() {
        for j in 0..fast.len() {
            fast[j] -= lr * g[j];
        }
        p = c.step(&s2, &[("p", TensorRef::vec_f64(g))], &StepOptions::new()).unwrap().params.unwrap()["p"]
            .to_f64()
            .unwrap();
        if i == 0 {
            assert_eq!(p, fast, "before the k-th step the parameter is the fast weights");
        }
    }
    let synced: Vec<f64> = p0.iter().zip(&fast).map(|(s, f)| s + la.alpha * (f - s)).collect();
    for (g, w) in p.iter().zip(&synced) {
        assert!((g - w).abs() <= 1e-12, "p = {p:?}, want {synced:?}");
    }
    let st = c.state(&s2, Some(&["p"])).unwrap();
    let slow = st["p"].get("lookahead_slow").expect("state lists lookahead_slow").to_f64().unwrap();
    for (g, w) in slow.iter().zip(&synced) {
        assert!((g - w).abs() <= 1e-12, "lookahead_slow = {slow:?}, want {synced:?}");
    }
    drop(c);
    d.stop();
}

#[test]
fn switch_carries_the_momentum_buffer_and_reload_needs_the_admin_token() {
    const ADMIN: &str = "rust-admin-token-for-the-test";
    let d = Daemon::start_with(&["--admin-token", ADMIN]);
    let mut c = client(&d);

    let s = c.open("switch", "sgd", &OpenOptions::new().hparam("lr", 0.1).hparam("momentum", 0.9)).unwrap().session;
    c.register(&s, &[("w", TensorRef::f32(&[4], &[-1.0, -0.5, 0.5, 1.0]).unwrap())]).unwrap();
    for g in [0.5f32, 1.5] {
        c.step(&s, &[("w", TensorRef::f32(&[4], &[g; 4]).unwrap())], &StepOptions::new().return_params(false))
            .unwrap();
    }
    let before = c.state(&s, None).unwrap()["w"]["momentum_buffer"].clone();
    // A zero buffer would make "unchanged" prove nothing.
    assert!(before.to_f32().unwrap().iter().any(|&x| x != 0.0), "{before:?}");

    let r = c.switch(&s, "rmsprop", None).unwrap();
    assert_eq!(r.optimizer, "rmsprop");
    assert_eq!(r.carried, ["momentum_buffer"]);
    assert!(r.optimizer_version.split('.').count() >= 2, "version {:?}", r.optimizer_version);
    let after = c.state(&s, None).unwrap()["w"]["momentum_buffer"].clone();
    assert_eq!(after, before, "the switch changed the momentum buffer");
    let info = c.info(&s, None).unwrap();
    assert_eq!((info.optimizer.as_str(), info.steps), ("rmsprop", 2));
    assert_eq!(info.optimizer_version, r.optimizer_version);
    assert_eq!(info.hparams["momentum"].as_f64(), Some(0.9), "momentum carried by key");
    assert_eq!(server_code(c.switch(&s, "no_such_optimizer", None)), ErrorCode::UnknownPlugin);

    for l in c.reload(ADMIN).unwrap() {
        assert!(!l.path.is_empty(), "{l:?}");
    }
    let e = c.reload(&format!("{ADMIN}x")).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadToken), "{e}");
    assert!(matches!(&e, Error::Server { code: 21, name, .. } if name == "BAD_TOKEN"), "{e:?}");
    assert_eq!(server_code(c.load("/nonexistent/plugin.so", "wrong")), ErrorCode::BadToken);
    assert_eq!(server_code(c.load("/nonexistent/plugin.so", ADMIN)), ErrorCode::Plugin);

    drop(c);
    d.stop();
}

#[test]
fn drop_closes_any_session_and_shutdown_stops_the_daemon() {
    const ADMIN: &str = "rust-admin-token-for-drop";
    let mut d = Daemon::start_with(&["--admin-token", ADMIN]);
    let mut c = client(&d);
    let s = c.open("dropme", "sgd", &OpenOptions::new().hparam("lr", 0.1)).unwrap().session;
    assert_eq!(server_code(c.drop_session("dropme", &format!("{ADMIN}x"))), ErrorCode::BadToken);
    assert_eq!(c.info(&s, None).unwrap().steps, 0, "a refused drop left it");
    c.drop_session("dropme", ADMIN).unwrap();
    assert_eq!(server_code(c.info(&s, None)), ErrorCode::UnknownSession);
    assert_eq!(server_code(c.drop_session("dropme", ADMIN)), ErrorCode::UnknownSession);

    assert_eq!(server_code(c.shutdown("wrong")), ErrorCode::BadToken);
    assert!(d.wait_exit(Duration::ZERO).is_none(), "a refused shutdown stopped the daemon");
    c.shutdown(ADMIN).unwrap();
    // Bounded: a daemon that ignores shutdown fails here.
    let status = d.wait_exit(Duration::from_secs(10)).expect("the daemon still runs 10 s after shutdown");
    assert!(status.success(), "optimd exited with {status} after shutdown; its log:\n{}", d.log());
    drop(c);
    d.stop();
}
