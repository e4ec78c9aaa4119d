//! The language-neutral conformance vectors (tests/protocol/vectors.json):
//! every request the client builds must decode to the vector's msgpack
//! value, and every reply must parse to the vector's result, server error or
//! protocol error. No socket: this is the wire module alone.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::json::{self, unhex, Json};
use optimd::wire::{reply, request, Message};
use optimd::*;
use rmpv::Value;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn tensor_from_json(j: &Json) -> Tensor {
    let dtype = Dtype::parse(j.get("dtype").expect("dtype").str()).expect("f32 or f64");
    let shape = j.get("shape").expect("shape").arr().iter().map(Json::u64).collect();
    Tensor::from_bytes(dtype, shape, unhex(j.get("data").expect("data").str())).expect("vector tensor is consistent")
}

fn hparams_from_json(j: &Json) -> Hparams {
    j.obj()
        .iter()
        .map(|(k, v)| {
            let hv = match v {
                Json::Bool(b) => HValue::Bool(*b),
                Json::Int(i) => HValue::Int(i64::try_from(*i).expect("i64")),
                Json::Float(f) => HValue::Float(*f),
                other => panic!("hparam {k}: {other:?}"),
            };
            (k.clone(), hv)
        })
        .collect()
}

fn durability(j: &Json) -> Durability {
    Durability::parse(j.str()).expect("durability")
}

fn group_from_json(j: &Json) -> GroupSpec {
    let g = j.obj();
    check_used(g, &["name", "hparams", "scheduler", "sched_hparams", "schedulers", "milestones"]);
    GroupSpec {
        name: g.get("name").expect("group name").str().to_owned(),
        hparams: g.get("hparams").map(hparams_from_json),
        scheduler: match g.get("scheduler") {
            None => GroupScheduler::Inherit,
            Some(Json::Null) => GroupScheduler::Off,
            Some(id) => GroupScheduler::Plugin(id.str().to_owned()),
        },
        sched_hparams: g.get("sched_hparams").map(hparams_from_json),
        schedulers: g.get("schedulers").map(schedulers_from_json),
        milestones: g.get("milestones").map(|a| a.arr().iter().map(Json::u64).collect()),
    }
}

fn schedulers_from_json(j: &Json) -> Vec<SchedulerSpec> {
    j.arr()
        .iter()
        .map(|e| {
            let m = e.obj();
            check_used(m, &["scheduler", "sched_hparams"]);
            SchedulerSpec {
                scheduler: m.get("scheduler").expect("scheduler").str().to_owned(),
                sched_hparams: m.get("sched_hparams").map(hparams_from_json),
            }
        })
        .collect()
}

fn lookahead_from_json(j: &Json) -> Lookahead {
    let m = j.obj();
    check_used(m, &["k", "alpha"]);
    Lookahead { k: m.get("k").expect("k").u64(), alpha: m.get("alpha").expect("alpha").f64() }
}

fn workers_from_json(j: &Json) -> Workers {
    let m = j.obj();
    check_used(m, &["mode", "count", "reduce", "timeout_ms", "on_timeout", "max_staleness"]);
    let mode = m.get("mode").expect("mode").str();
    Workers {
        mode: WorkersMode::parse(mode).unwrap_or_else(|| panic!("workers.mode {mode:?}")),
        count: m.get("count").map(Json::u64),
        reduce: m.get("reduce").map(|r| Reduce::parse(r.str()).expect("workers.reduce")),
        timeout_ms: m.get("timeout_ms").map(Json::u64),
        on_timeout: m.get("on_timeout").map(|o| OnTimeout::parse(o.str()).expect("workers.on_timeout")),
        max_staleness: m.get("max_staleness").map(Json::u64),
    }
}

fn clip_norm_from_json(j: &Json) -> ClipNorm {
    let c = j.obj();
    check_used(c, &["max_norm", "norm_type", "per_group"]);
    ClipNorm {
        max_norm: c.get("max_norm").expect("max_norm").f64(),
        norm_type: c.get("norm_type").map(Json::f64),
        per_group: c.get("per_group").map(Json::bool),
    }
}

/// Builds the request a vector's `call` describes, through the public API.
fn build(call: &Json, id: u64, owned: &mut Vec<Tensor>) -> Vec<u8> {
    let c = call.obj();
    let op = c["op"].str();
    let mut used = vec!["op"];
    let mut get = |k: &'static str| -> Option<&Json> {
        used.push(k);
        c.get(k)
    };
    let session = || Session::new(c["session"].str(), c["token"].str());
    let names: Option<Vec<&str>>;
    let msg: Message<'_> = match op {
        "hello" => request::hello(id, get("client").map(Json::str)),
        "plugins" => request::plugins(id),
        "sessions" => request::sessions(id),
        "open" => {
            let o = OpenOptions {
                hparams: get("hparams").map(hparams_from_json),
                scheduler: get("scheduler").map(|s| s.str().to_owned()),
                sched_hparams: get("sched_hparams").map(hparams_from_json),
                durability: get("durability").map(durability),
                open_key: get("open_key").map(|k| k.str().to_owned()),
                groups: get("groups").map(|a| a.arr().iter().map(group_from_json).collect()),
                schedulers: get("schedulers").map(schedulers_from_json),
                milestones: get("milestones").map(|a| a.arr().iter().map(Json::u64).collect()),
                lookahead: get("lookahead").map(lookahead_from_json),
                workers: get("workers").map(workers_from_json),
            };
            request::open(id, get("session").unwrap().str(), get("optimizer").unwrap().str(), &o)
        }
        "reload" => request::reload(id, get("admin_token").expect("admin_token").str()),
        "load" => request::load(id, get("path").expect("path").str(), get("admin_token").expect("admin_token").str()),
        "drop" => request::drop(id, get("session").expect("session").str(), get("admin_token").expect("admin_token").str()),
        "shutdown" => request::shutdown(id, get("admin_token").expect("admin_token").str()),
        "attach" | "hparams" | "close" | "export" | "info" | "set_hparams" | "register" | "step" | "pull"
        | "state" | "observe" | "switch" => {
            get("session");
            get("token");
            let s = session();
            match op {
                "attach" => request::attach(id, &s),
                "hparams" => request::hparams(id, &s),
                "close" => request::close(id, &s),
                "export" => request::export(id, &s),
                "info" => request::info(id, &s, get("client").map(Json::str)),
                "set_hparams" => {
                    let h = hparams_from_json(get("hparams").expect("hparams"));
                    request::set_hparams(id, &s, &h, get("group").map(Json::str))
                }
                "switch" => {
                    let optimizer = get("optimizer").expect("optimizer").str();
                    let h = get("hparams").map(hparams_from_json);
                    request::switch(id, &s, optimizer, h.as_ref())
                }
                "observe" => {
                    let metric = get("metric").expect("metric").f64();
                    request::observe(id, &s, metric, get("group").map(Json::str))
                }
                "register" | "step" => {
                    let key = if op == "register" { "params" } else { "grads" };
                    let map = get(key).expect("tensor map").obj();
                    let start = owned.len();
                    owned.extend(map.values().map(tensor_from_json));
                    let refs: Vec<(&str, TensorRef<'_>)> =
                        map.keys().map(String::as_str).zip(owned[start..].iter().map(Tensor::as_ref)).collect();
                    let bytes = if op == "register" {
                        request::register(id, &s, &refs, get("group").map(Json::str)).map(|m| m.to_vec())
                    } else {
                        let o = StepOptions {
                            return_params: get("return").map(Json::bool),
                            seq: get("seq").map(Json::u64),
                            client: get("client").map(|s| s.str().to_owned()),
                            clip_value: get("clip_value").map(Json::f64),
                            clip_norm: get("clip_norm").map(clip_norm_from_json),
                            worker: get("worker").map(|s| s.str().to_owned()),
                            part_elements: None,
                            parts_in_flight: None,
                        };
                        request::step(id, &s, &refs, &o).map(|m| m.to_vec())
                    };
                    check_used(c, &used);
                    return bytes.expect("build");
                }
                _ => {
                    names = get("names").map(|n| n.arr().iter().map(Json::str).collect());
                    if op == "pull" {
                        request::pull(id, &s, names.as_deref())
                    } else {
                        request::state(id, &s, names.as_deref())
                    }
                }
            }
        }
        "import" => {
            let snap = unhex(get("snapshot").unwrap().str());
            let o = ImportOptions {
                session: get("session").map(|s| s.str().to_owned()),
                durability: get("durability").map(durability),
            };
            let bytes = request::import(id, &snap, &o).map(|m| m.to_vec()).expect("build");
            check_used(c, &used);
            return bytes;
        }
        other => panic!("vector for unknown op {other}"),
    }
    .expect("build");
    check_used(c, &used);
    msg.to_vec()
}

// A `call` key the mapping above does not know would be silently left out
// of the request; refuse it instead.
fn check_used(c: &BTreeMap<String, Json>, used: &[&str]) {
    for k in c.keys() {
        assert!(used.contains(&k.as_str()), "call key {k:?} is not mapped to the API");
    }
}

fn decode(bytes: &[u8]) -> Value {
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).expect("msgpack");
    assert!(rd.is_empty(), "bytes after the msgpack value");
    v
}

/// Equal as the schema says: map order, integer width and float width
/// do not matter; `id` at the top is ignored.
fn same(a: &Value, b: &Value, top: bool) -> bool {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => {
            let x = x.as_i64().map(i128::from).or(x.as_u64().map(i128::from));
            let y = y.as_i64().map(i128::from).or(y.as_u64().map(i128::from));
            x == y
        }
        (Value::F32(_) | Value::F64(_), Value::F32(_) | Value::F64(_)) => a.as_f64() == b.as_f64(),
        (Value::Map(x), Value::Map(y)) => {
            let strip = |m: &Vec<(Value, Value)>| -> Vec<(Value, Value)> {
                m.iter().filter(|(k, _)| !(top && k.as_str() == Some("id"))).cloned().collect()
            };
            let (x, y) = (strip(x), strip(y));
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.iter().any(|(k2, v2)| same(k, k2, false) && same(v, v2, false)))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q, false)),
        _ => a == b,
    }
}

// Typed results back to the JSON shape of `expect.result`.
fn tj(t: &Tensor) -> Json {
    let mut m = BTreeMap::new();
    m.insert("dtype".into(), Json::Str(t.dtype().as_str().into()));
    m.insert("shape".into(), Json::Array(t.shape().iter().map(|&d| Json::Int(d as i128)).collect()));
    m.insert("data".into(), Json::Str(hex(t.bytes())));
    Json::Object(m)
}

fn tmap(m: &BTreeMap<String, Tensor>) -> Json {
    Json::Object(m.iter().map(|(k, t)| (k.clone(), tj(t))).collect())
}

fn hv(v: &HValue) -> Json {
    match *v {
        HValue::Bool(b) => Json::Bool(b),
        HValue::Int(i) => Json::Int(i as i128),
        HValue::Float(f) => Json::Float(f),
    }
}

fn hmap(h: &Hparams) -> Json {
    Json::Object(h.iter().map(|(k, v)| (k.clone(), hv(v))).collect())
}

fn s(x: &str) -> Json {
    Json::Str(x.into())
}

fn u(x: u64) -> Json {
    Json::Int(x as i128)
}

fn opt_s(x: &Option<String>) -> Json {
    x.as_deref().map(s).unwrap_or(Json::Null)
}

fn obj(pairs: Vec<(&str, Json)>) -> Json {
    Json::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn fmap(m: &BTreeMap<String, f64>) -> Json {
    Json::Object(m.iter().map(|(k, v)| (k.clone(), Json::Float(*v))).collect())
}

/// `schedulers` and `milestones`, each only when the result has it.
fn combined_json(schedulers: &Option<Vec<SchedulerInfo>>, milestones: &Option<Vec<u64>>) -> Vec<(&'static str, Json)> {
    let mut o = Vec::new();
    if let Some(sc) = schedulers {
        o.push((
            "schedulers",
            Json::Array(
                sc.iter()
                    .map(|x| obj(vec![("scheduler", s(&x.scheduler)), ("sched_hparams", hmap(&x.sched_hparams))]))
                    .collect(),
            ),
        ));
    }
    if let Some(ms) = milestones {
        o.push(("milestones", Json::Array(ms.iter().map(|&m| u(m)).collect())));
    }
    o
}

fn groups_json(gs: &[GroupInfo]) -> Json {
    Json::Array(
        gs.iter()
            .map(|g| {
                let mut o = vec![
                    ("name", s(&g.name)),
                    ("scheduler", opt_s(&g.scheduler)),
                    ("hparams", hmap(&g.hparams)),
                    ("sched_hparams", hmap(&g.sched_hparams)),
                    ("base_lr", Json::Float(g.base_lr)),
                    ("lr", Json::Float(g.lr)),
                    ("params", u(g.params)),
                ];
                o.extend(combined_json(&g.schedulers, &g.milestones));
                obj(o)
            })
            .collect(),
    )
}

fn hparams_json(h: &HparamsInfo) -> Vec<(&'static str, Json)> {
    vec![
        ("hparams", hmap(&h.hparams)),
        ("sched_hparams", hmap(&h.sched_hparams)),
        ("base_lr", Json::Float(h.base_lr)),
        ("lr", Json::Float(h.lr)),
        ("groups", groups_json(&h.groups)),
    ]
}

/// Parses a reply for `op` and renders the typed result as JSON.
fn parse(op: &str, bytes: &[u8], id: u64) -> optimd::Result<Json> {
    Ok(match op {
        "hello" => {
            let h = reply::hello(bytes, id)?;
            obj(vec![
                ("server", s(&h.server)),
                ("version", s(&h.version)),
                ("protocol", u(h.protocol)),
                ("abi", Json::Array(vec![u(h.abi.0), u(h.abi.1)])),
                ("max_message", u(h.max_message)),
            ])
        }
        "plugins" => {
            let ps = reply::plugins(bytes, id)?;
            let list = ps
                .iter()
                .map(|p| {
                    let mut o = vec![
                        ("id", s(&p.id)),
                        ("kind", s(&p.kind)),
                        ("version", s(&p.version)),
                        ("description", s(&p.description)),
                        (
                            "hparams",
                            Json::Array(
                                p.hparams
                                    .iter()
                                    .map(|h| {
                                        obj(vec![
                                            ("key", s(&h.key)),
                                            ("type", s(&h.kind)),
                                            ("required", Json::Bool(h.required)),
                                            ("mutable", Json::Bool(h.mutable)),
                                            ("min", Json::Float(h.min)),
                                            ("max", Json::Float(h.max)),
                                            ("min_exclusive", Json::Bool(h.min_exclusive)),
                                            ("max_exclusive", Json::Bool(h.max_exclusive)),
                                            ("default", h.default.as_ref().map(hv).unwrap_or(Json::Null)),
                                            ("doc", s(&h.doc)),
                                        ])
                                    })
                                    .collect(),
                            ),
                        ),
                    ];
                    if let Some(slots) = &p.slots {
                        o.push((
                            "slots",
                            Json::Array(
                                slots
                                    .iter()
                                    .map(|x| {
                                        obj(vec![
                                            ("key", s(&x.key)),
                                            ("dtype", s(&x.dtype)),
                                            ("shape", s(&x.shape)),
                                            ("enabled_by", opt_s(&x.enabled_by)),
                                            ("doc", s(&x.doc)),
                                        ])
                                    })
                                    .collect(),
                            ),
                        ));
                    }
                    if let Some(d) = &p.dtypes {
                        o.push(("dtypes", Json::Array(d.iter().map(|x| s(x)).collect())));
                    }
                    if let Some(b) = p.sliced {
                        o.push(("sliced", Json::Bool(b)));
                    }
                    obj(o)
                })
                .collect();
            obj(vec![("plugins", Json::Array(list))])
        }
        "open" => {
            let o = reply::open(bytes, id)?;
            obj(vec![
                ("session", s(&o.session.name)),
                ("token", s(&o.session.token)),
                ("lr", Json::Float(o.lr)),
                ("existing", Json::Bool(o.existing)),
            ])
        }
        "info" | "attach" => {
            let i = reply::info(bytes, id)?;
            let mut o = vec![
                ("session", s(&i.session)),
                ("durability", s(i.durability.as_str())),
                ("optimizer", s(&i.optimizer)),
                ("optimizer_version", s(&i.optimizer_version)),
                ("scheduler", opt_s(&i.scheduler)),
                ("hparams", hmap(&i.hparams)),
                ("sched_hparams", hmap(&i.sched_hparams)),
                ("base_lr", Json::Float(i.base_lr)),
                ("lr", Json::Float(i.lr)),
                ("steps", u(i.steps)),
                (
                    "params",
                    Json::Array(
                        i.params
                            .iter()
                            .map(|p| {
                                obj(vec![
                                    ("name", s(&p.name)),
                                    ("group", s(&p.group)),
                                    ("dtype", s(p.dtype.as_str())),
                                    ("shape", Json::Array(p.shape.iter().map(|&d| u(d)).collect())),
                                    ("steps", u(p.steps)),
                                ])
                            })
                            .collect(),
                    ),
                ),
                ("groups", groups_json(&i.groups)),
            ];
            if let Some(cs) = i.client_seq {
                o.push(("client_seq", u(cs)));
            }
            o.push((
                "lookahead",
                i.lookahead.map_or(Json::Null, |l| obj(vec![("k", u(l.k)), ("alpha", Json::Float(l.alpha))])),
            ));
            o.extend(combined_json(&i.schedulers, &i.milestones));
            obj(o)
        }
        "hparams" | "set_hparams" => obj(hparams_json(&reply::hparams(bytes, id)?)),
        "close" | "drop" | "shutdown" => {
            reply::empty(bytes, id)?;
            obj(vec![])
        }
        "sessions" => {
            let l = reply::sessions(bytes, id)?;
            obj(vec![(
                "sessions",
                Json::Array(
                    l.iter()
                        .map(|x| {
                            obj(vec![
                                ("session", s(&x.session)),
                                ("optimizer", s(&x.optimizer)),
                                ("scheduler", opt_s(&x.scheduler)),
                                ("params", u(x.params)),
                                ("steps", u(x.steps)),
                            ])
                        })
                        .collect(),
                ),
            )])
        }
        "register" => obj(vec![("registered", u(reply::register(bytes, id)?))]),
        "step" => {
            let r = reply::step(bytes, id)?;
            let mut o = vec![
                ("steps", u(r.steps)),
                ("lr", Json::Float(r.lr)),
                ("next_lr", Json::Float(r.next_lr)),
                ("duplicate", Json::Bool(r.duplicate)),
            ];
            if let Some(m) = &r.lrs {
                o.push(("lrs", fmap(m)));
            }
            if let Some(m) = &r.next_lrs {
                o.push(("next_lrs", fmap(m)));
            }
            match &r.grad_norm {
                None => {}
                Some(GradNorm::Total(n)) => o.push(("grad_norm", Json::Float(*n))),
                Some(GradNorm::PerGroup(m)) => o.push(("grad_norms", fmap(m))),
            }
            if let Some(p) = &r.params {
                o.push(("params", tmap(p)));
            }
            obj(o)
        }
        "observe" => {
            let r = reply::observe(bytes, id)?;
            obj(vec![("lr", Json::Float(r.lr)), ("lrs", fmap(&r.lrs))])
        }
        "pull" => obj(vec![("params", tmap(&reply::pull(bytes, id)?))]),
        "state" => {
            let st = reply::state(bytes, id)?;
            obj(vec![("state", Json::Object(st.iter().map(|(k, m)| (k.clone(), tmap(m))).collect()))])
        }
        "export" => obj(vec![("snapshot", s(&hex(&reply::export(bytes, id)?)))]),
        "switch" => {
            let r = reply::switch(bytes, id)?;
            obj(vec![
                ("optimizer", s(&r.optimizer)),
                ("optimizer_version", s(&r.optimizer_version)),
                ("carried", Json::Array(r.carried.iter().map(|k| s(k)).collect())),
            ])
        }
        "reload" | "load" => {
            let list = reply::reload(bytes, id)?
                .iter()
                .map(|l| {
                    let mut o = vec![("path", s(&l.path)), ("loaded", Json::Bool(l.loaded()))];
                    match &l.outcome {
                        LoadOutcome::Loaded { id, version } => {
                            o.push(("id", s(id)));
                            o.push(("version", s(version)));
                        }
                        LoadOutcome::Refused { error } => o.push(("error", s(error))),
                    }
                    obj(o)
                })
                .collect();
            obj(vec![("plugins", Json::Array(list))])
        }
        "import" => {
            let i = reply::import(bytes, id)?;
            obj(vec![("session", s(&i.session.name)), ("token", s(&i.session.token)), ("steps", u(i.steps))])
        }
        other => panic!("reply vector for unknown op {other}"),
    })
}

/// JSON equality with numbers compared by value (an integral float equals
/// the integer; a float equals the same value rounded to float32, since a
/// reply may carry float32) and hex compared case-insensitively.
fn json_same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Int(x), Json::Int(y)) => x == y,
        (Json::Int(_) | Json::Float(_), Json::Int(_) | Json::Float(_)) => {
            let (x, y) = (a.f64(), b.f64());
            x == y || (x as f32) == (y as f32) && (x as f32 as f64 == x || y as f32 as f64 == y)
        }
        (Json::Str(x), Json::Str(y)) => x.eq_ignore_ascii_case(y),
        (Json::Array(x), Json::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_same(p, q)),
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_same(v, w)))
        }
        _ => a == b,
    }
}

/// Runs every vector of one file; returns how many ran.
fn run_file(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = json::parse(&text);
    assert_eq!(doc.get("protocol").map(Json::u64), Some(1), "{}: protocol", path.display());
    let mut failures = Vec::new();
    let mut count = 0;

    for v in doc.get("requests").map(Json::arr).unwrap_or(&[]) {
        count += 1;
        let name = v.get("name").map(Json::str).unwrap_or("?");
        let want = decode(&unhex(v.get("msgpack").expect("msgpack").str()));
        let mut owned = Vec::new();
        let got_bytes = build(v.get("call").expect("call"), 4242, &mut owned);
        let got = decode(&got_bytes);
        if !same(&got, &want, true) {
            failures.push(format!("request {name}: built {got}\n    expected {want}"));
        }
        // The id the client chose is in the envelope.
        if let Value::Map(m) = &got {
            assert!(
                m.iter().any(|(k, v)| k.as_str() == Some("id") && v.as_u64() == Some(4242)),
                "request {name}: id not sent"
            );
        }
    }

    for v in doc.get("replies").map(Json::arr).unwrap_or(&[]) {
        count += 1;
        let name = v.get("name").map(Json::str).unwrap_or("?");
        let op = v.get("op").expect("op").str();
        let id = v.get("request_id").expect("request_id").u64();
        let bytes = unhex(v.get("msgpack").expect("msgpack").str());
        let expect = v.get("expect").expect("expect");
        let got = std::panic::catch_unwind(|| parse(op, &bytes, id));
        let got = match got {
            Ok(g) => g,
            Err(_) => {
                failures.push(format!("reply {name}: the parser panicked"));
                continue;
            }
        };
        if expect.get("invalid").map(Json::bool) == Some(true) {
            if !matches!(got, Err(Error::Protocol(_))) {
                failures.push(format!("reply {name}: expected a protocol error, got {got:?}"));
            }
        } else if expect.get("ok").map(Json::bool) == Some(true) {
            match got {
                Ok(r) if json_same(&r, expect.get("result").expect("result")) => {}
                other => failures.push(format!(
                    "reply {name}: got {other:?}\n    expected {:?}",
                    expect.get("result").unwrap()
                )),
            }
        } else {
            let code = expect.get("code").expect("code").u64() as i64;
            let ename = expect.get("error").expect("error").str();
            match &got {
                Err(Error::Server { code: c, name: n, .. }) if *c == code && n == ename => {
                    assert_eq!(got.as_ref().unwrap_err().code().map(ErrorCode::code), Some(code).filter(|_| ErrorCode::from_code(code).is_some()));
                }
                other => failures.push(format!("reply {name}: expected server error {ename} ({code}), got {other:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}: {} of {count} vectors failed:\n{}", path.display(), failures.len(), failures.join("\n"));
    count
}

/// The runner itself, on a small sample written by hand from the protocol
/// (tests/data/sample_vectors.json; scripts beside it say how).
#[test]
fn sample_vectors() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sample_vectors.json");
    let n = run_file(&p);
    assert!(n >= 10, "the sample has {n} vectors");
}

/// The project's shared vectors, which every client runs.
#[test]
fn shared_vectors() {
    let p = PathBuf::from(common::env("OPTIMD_SOURCE_DIR")).join("tests/protocol/vectors.json");
    assert!(p.exists(), "{} is missing", p.display());
    let n = run_file(&p);
    eprintln!("{n} shared vectors passed");
    assert!(n > 0);
}

/// A wrong reply must be caught by the checks above and not by luck: the
/// runner reports a mismatch when the expectation is changed.
#[test]
fn runner_detects_mismatches() {
    let a = decode(&[0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    let b = decode(&[0x82, 0xa1, b'b', 0xca, 0x3f, 0x80, 0, 0, 0xa1, b'a', 0xcd, 0x00, 0x01]);
    assert!(same(&a, &b, true), "order, int width and float width are ignored");
    let c = decode(&[0x82, 0xa1, b'a', 0x02, 0xa1, b'b', 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    assert!(!same(&a, &c, true));
    let d = decode(&[0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0x01]);
    assert!(!same(&a, &d, true), "an int is not a float");
}
