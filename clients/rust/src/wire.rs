//! Requests and replies as bytes, with no socket involved: `request::*`
//! builds the msgpack of a request, `reply::*` checks and decodes the msgpack
//! of a reply. The [`Client`](crate::Client) is these two around a transport;
//! the conformance test calls them directly.

use std::collections::BTreeMap;
use std::io::IoSlice;

use rmp::encode as enc;
use rmpv::Value;

use crate::error::{Error, Result};
use crate::tensor::{byte_len, Dtype, Tensor, TensorRef};
use crate::types::*;

/// The protocol version this client speaks.
pub const PROTOCOL_VERSION: u64 = 1;

// Tensor data below this size is copied into the message head: one more
// iovec per tensor costs more than copying a few hundred bytes.
const INLINE_MAX: usize = 512;

/// Tensor data of this many bytes or more is aligned in a request: the
/// daemon receives a request into a 16-byte aligned buffer that holds REQ's
/// 4-byte request ID and then the body, and reads a tensor's data in place
/// where 4 + its body offset is a multiple of 16, copying it first
/// elsewhere (docs/protocol.md §3, `pad`).
pub const PAD_FROM: usize = 64 << 10;
const ALIGN: usize = 16;
const REQ_HEADER: usize = 4;

/// Most parts one sliced step may have (docs/protocol.md, `step`).
pub const MAX_PARTS: u32 = 65536;

/// The parts of a sliced step: the gradients, taken in order as if
/// concatenated (each flattened in C order), cut into consecutive parts of
/// `part_elements` elements (the last one shorter). A gradient that lies
/// within one part is there whole; one that a cut crosses goes as ranges
/// `{offset, values}`, 1-D views of its memory (nothing is copied on a
/// little-endian host). Gradients with no elements go whole into the part
/// being filled. When there are more than `part_elements` × [`MAX_PARTS`]
/// elements the parts are made larger, so that there are at most
/// [`MAX_PARTS`]; gradients with no elements at all make one part. A name
/// given twice, or `part_elements` 0, is [`Error::Invalid`].
#[allow(clippy::type_complexity)]
pub fn slice_grads<'n, 'a>(
    grads: &[(&'n str, TensorRef<'a>)],
    part_elements: u64,
) -> Result<Vec<Vec<(&'n str, PartGrad<'a>)>>> {
    if part_elements == 0 {
        return Err(Error::invalid("part_elements must be at least 1"));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some((name, _)) = grads.iter().find(|(name, _)| !seen.insert(*name)) {
        return Err(Error::invalid(format!("gradient {name:?} given twice")));
    }
    let total: u64 = grads.iter().map(|(_, t)| t.numel() as u64).sum();
    let size = part_elements.max(total.div_ceil(MAX_PARTS as u64));
    let mut parts = vec![Vec::new()];
    let mut room = size;
    for (name, t) in grads {
        let n = t.numel() as u64;
        if n == 0 {
            parts.last_mut().expect("one part at least").push((*name, PartGrad::Whole(t.clone())));
            continue;
        }
        let mut at = 0;
        while at < n {
            if room == 0 {
                parts.push(Vec::new());
                room = size;
            }
            let take = (n - at).min(room);
            let g = if take == n {
                PartGrad::Whole(t.clone())
            } else {
                PartGrad::Range { offset: at, values: t.flat_range(at as usize, take as usize)? }
            };
            parts.last_mut().expect("one part at least").push((*name, g));
            at += take;
            room -= take;
        }
    }
    Ok(parts)
}

/// An encoded request: msgpack bytes, except that large tensor data is
/// borrowed from the caller and spliced in where it belongs, so sending it
/// copies nothing.
#[derive(Debug)]
pub struct Message<'a> {
    head: Vec<u8>,
    // (offset in head, bytes): the borrowed bytes follow head[..offset].
    chunks: Vec<(usize, &'a [u8])>,
}

impl<'a> Message<'a> {
    fn new() -> Message<'a> {
        Message { head: Vec::with_capacity(256), chunks: Vec::new() }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.chunks.iter().map(|(_, c)| c.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole message as one buffer (copies).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for s in self.slices() {
            out.extend_from_slice(&s);
        }
        out
    }

    /// The message as consecutive slices, for a vectored write.
    pub fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(2 * self.chunks.len() + 1);
        let mut at = 0;
        for &(off, chunk) in &self.chunks {
            if off > at {
                out.push(IoSlice::new(&self.head[at..off]));
            }
            if !chunk.is_empty() {
                out.push(IoSlice::new(chunk));
            }
            at = off;
        }
        if at < self.head.len() {
            out.push(IoSlice::new(&self.head[at..]));
        }
        out
    }

    fn map(&mut self, len: usize) -> Result<()> {
        let len = u32::try_from(len).map_err(|_| Error::invalid("map too large"))?;
        enc::write_map_len(&mut self.head, len).expect("Vec write");
        Ok(())
    }

    fn array(&mut self, len: usize) -> Result<()> {
        let len = u32::try_from(len).map_err(|_| Error::invalid("array too large"))?;
        enc::write_array_len(&mut self.head, len).expect("Vec write");
        Ok(())
    }

    fn str(&mut self, s: &str) -> Result<()> {
        if u32::try_from(s.len()).is_err() {
            return Err(Error::invalid("string too long"));
        }
        enc::write_str(&mut self.head, s).expect("Vec write");
        Ok(())
    }

    fn uint(&mut self, v: u64) {
        enc::write_uint(&mut self.head, v).expect("Vec write");
    }

    fn bool(&mut self, v: bool) {
        enc::write_bool(&mut self.head, v).expect("Vec write");
    }

    fn float(&mut self, v: f64) {
        enc::write_f64(&mut self.head, v).expect("Vec write");
    }

    fn nil(&mut self) {
        enc::write_nil(&mut self.head).expect("Vec write");
    }

    fn bin(&mut self, data: &'a [u8]) -> Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| Error::invalid("binary over 4 GiB"))?;
        enc::write_bin_len(&mut self.head, len).expect("Vec write");
        if data.len() <= INLINE_MAX {
            self.head.extend_from_slice(data);
        } else {
            self.chunks.push((self.head.len(), data));
        }
        Ok(())
    }

    fn hvalue(&mut self, v: &HValue) {
        match *v {
            HValue::Bool(b) => self.bool(b),
            HValue::Int(i) => {
                enc::write_sint(&mut self.head, i).expect("Vec write");
            }
            HValue::Float(f) => enc::write_f64(&mut self.head, f).expect("Vec write"),
        }
    }

    fn hparams(&mut self, h: &Hparams) -> Result<()> {
        self.map(h.len())?;
        for (k, v) in h {
            self.str(k)?;
            self.hvalue(v);
        }
        Ok(())
    }

    fn scheduler_specs(&mut self, specs: &[SchedulerSpec]) -> Result<()> {
        self.array(specs.len())?;
        for sp in specs {
            self.map(1 + sp.sched_hparams.is_some() as usize)?;
            self.str("scheduler")?;
            self.str(&sp.scheduler)?;
            if let Some(h) = &sp.sched_hparams {
                self.str("sched_hparams")?;
                self.hparams(h)?;
            }
        }
        Ok(())
    }

    /// `schedulers` and `milestones`, each when given.
    fn combined(&mut self, specs: &Option<Vec<SchedulerSpec>>, milestones: &Option<Vec<u64>>) -> Result<()> {
        if let Some(sp) = specs {
            self.str("schedulers")?;
            self.scheduler_specs(sp)?;
        }
        if let Some(ms) = milestones {
            self.str("milestones")?;
            self.array(ms.len())?;
            for &m in ms {
                self.uint(m);
            }
        }
        Ok(())
    }

    fn group_spec(&mut self, g: &GroupSpec) -> Result<()> {
        let keys = 1
            + g.hparams.is_some() as usize
            + !matches!(g.scheduler, GroupScheduler::Inherit) as usize
            + g.sched_hparams.is_some() as usize
            + g.schedulers.is_some() as usize
            + g.milestones.is_some() as usize;
        self.map(keys)?;
        self.str("name")?;
        self.str(&g.name)?;
        if let Some(h) = &g.hparams {
            self.str("hparams")?;
            self.hparams(h)?;
        }
        match &g.scheduler {
            GroupScheduler::Inherit => {}
            GroupScheduler::Off => {
                self.str("scheduler")?;
                self.nil();
            }
            GroupScheduler::Plugin(id) => {
                self.str("scheduler")?;
                self.str(id)?;
            }
        }
        if let Some(h) = &g.sched_hparams {
            self.str("sched_hparams")?;
            self.hparams(h)?;
        }
        self.combined(&g.schedulers, &g.milestones)
    }

    fn workers(&mut self, w: &Workers) -> Result<()> {
        self.map(
            1 + w.count.is_some() as usize
                + w.reduce.is_some() as usize
                + w.timeout_ms.is_some() as usize
                + w.on_timeout.is_some() as usize
                + w.max_staleness.is_some() as usize,
        )?;
        self.str("mode")?;
        self.str(w.mode.as_str())?;
        if let Some(n) = w.count {
            self.str("count")?;
            self.uint(n);
        }
        if let Some(r) = w.reduce {
            self.str("reduce")?;
            self.str(r.as_str())?;
        }
        if let Some(ms) = w.timeout_ms {
            self.str("timeout_ms")?;
            self.uint(ms);
        }
        if let Some(o) = w.on_timeout {
            self.str("on_timeout")?;
            self.str(o.as_str())?;
        }
        if let Some(n) = w.max_staleness {
            self.str("max_staleness")?;
            self.uint(n);
        }
        Ok(())
    }

    fn clip_norm(&mut self, c: &ClipNorm) -> Result<()> {
        self.map(1 + c.norm_type.is_some() as usize + c.per_group.is_some() as usize)?;
        self.str("max_norm")?;
        self.float(c.max_norm);
        if let Some(p) = c.norm_type {
            self.str("norm_type")?;
            self.float(p);
        }
        if let Some(b) = c.per_group {
            self.str("per_group")?;
            self.bool(b);
        }
        Ok(())
    }

    /// A tensor map. One with [`PAD_FROM`] bytes of data or more is
    /// `{dtype, shape, pad, data}`, `pad` being the zeros that put the first
    /// data byte where the daemon reads it in place; a smaller one is
    /// `{dtype, shape, data}`.
    fn tensor(&mut self, t: &TensorRef<'a>) -> Result<()> {
        let nbytes = t.bytes().len();
        let pad = nbytes >= PAD_FROM && u32::try_from(nbytes).is_ok();
        self.map(if pad { 4 } else { 3 })?;
        self.str("dtype")?;
        self.str(t.dtype().as_str())?;
        self.str("shape")?;
        self.array(t.shape().len())?;
        for &d in t.shape() {
            self.uint(d);
        }
        if pad {
            // "pad" (4 bytes), its bin8 header (2), k bytes, "data" (5) and
            // the bin32 header (5), then the data.
            let at = self.len() + 4 + 2 + 5 + 5;
            let k = (ALIGN - (REQ_HEADER + at) % ALIGN) % ALIGN;
            self.str("pad")?;
            enc::write_bin_len(&mut self.head, k as u32).expect("Vec write");
            self.head.extend_from_slice(&[0u8; ALIGN][..k]);
        }
        self.str("data")?;
        match t.borrowed_bytes() {
            Some(b) => self.bin(b),
            None => {
                // Only on big-endian hosts: the bytes were converted and
                // live in the TensorRef, not the caller's slice.
                let len = u32::try_from(t.bytes().len()).map_err(|_| Error::invalid("binary over 4 GiB"))?;
                enc::write_bin_len(&mut self.head, len).expect("Vec write");
                self.head.extend_from_slice(t.bytes());
                Ok(())
            }
        }
    }

    fn tensors(&mut self, ts: &[(&str, TensorRef<'a>)]) -> Result<()> {
        self.map(ts.len())?;
        for (name, t) in ts {
            self.str(name)?;
            self.tensor(t)?;
        }
        Ok(())
    }

    /// A part's `grads`: whole tensors, and ranges as `{offset, values}`
    /// (`values` padded as any tensor is).
    fn part_grads(&mut self, gs: &[(&str, PartGrad<'a>)]) -> Result<()> {
        self.map(gs.len())?;
        for (name, g) in gs {
            self.str(name)?;
            match g {
                PartGrad::Whole(t) => self.tensor(t)?,
                PartGrad::Range { offset, values } => {
                    self.map(2)?;
                    self.str("offset")?;
                    self.uint(*offset);
                    self.str("values")?;
                    self.tensor(values)?;
                }
            }
        }
        Ok(())
    }

    fn names(&mut self, names: &[&str]) -> Result<()> {
        self.array(names.len())?;
        for n in names {
            self.str(n)?;
        }
        Ok(())
    }

    /// The envelope and, for session ops, session and token; `extra` is the
    /// number of op-specific keys that follow.
    fn envelope(&mut self, id: u64, op: &str, session: Option<&Session>, extra: usize) -> Result<()> {
        self.map(3 + extra + if session.is_some() { 2 } else { 0 })?;
        self.str("v")?;
        self.uint(PROTOCOL_VERSION);
        self.str("id")?;
        self.uint(id);
        self.str("op")?;
        self.str(op)?;
        if let Some(s) = session {
            self.str("session")?;
            self.str(&s.name)?;
            self.str("token")?;
            self.str(&s.token)?;
        }
        Ok(())
    }
}

/// Request builders, one per op. `id` is the envelope's request id, echoed
/// by the reply.
pub mod request {
    use super::*;

    pub fn hello(id: u64, client: Option<&str>) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "hello", None, client.is_some() as usize)?;
        if let Some(c) = client {
            m.str("client")?;
            m.str(c)?;
        }
        Ok(m)
    }

    pub fn plugins(id: u64) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "plugins", None, 0)?;
        Ok(m)
    }

    pub fn sessions(id: u64) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "sessions", None, 0)?;
        Ok(m)
    }

    pub fn open(id: u64, session: &str, optimizer: &str, o: &OpenOptions) -> Result<Message<'static>> {
        if let Some(k) = &o.open_key {
            // Checked here: a key the daemon refuses would turn every retry
            // into the same BAD_REQUEST.
            if !(16..=64).contains(&k.len()) || !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Err(Error::invalid("open_key must be 16 to 64 printable ASCII bytes (no space)"));
            }
        }
        let mut m = Message::new();
        let extra = 2
            + o.hparams.is_some() as usize
            + o.scheduler.is_some() as usize
            + o.sched_hparams.is_some() as usize
            + o.durability.is_some() as usize
            + o.open_key.is_some() as usize
            + o.groups.is_some() as usize
            + o.schedulers.is_some() as usize
            + o.milestones.is_some() as usize
            + o.lookahead.is_some() as usize
            + o.workers.is_some() as usize;
        m.envelope(id, "open", None, extra)?;
        m.str("session")?;
        m.str(session)?;
        m.str("optimizer")?;
        m.str(optimizer)?;
        if let Some(h) = &o.hparams {
            m.str("hparams")?;
            m.hparams(h)?;
        }
        if let Some(s) = &o.scheduler {
            m.str("scheduler")?;
            m.str(s)?;
        }
        if let Some(h) = &o.sched_hparams {
            m.str("sched_hparams")?;
            m.hparams(h)?;
        }
        m.combined(&o.schedulers, &o.milestones)?;
        if let Some(l) = &o.lookahead {
            m.str("lookahead")?;
            m.map(2)?;
            m.str("k")?;
            m.uint(l.k);
            m.str("alpha")?;
            m.float(l.alpha);
        }
        if let Some(d) = o.durability {
            m.str("durability")?;
            m.str(d.as_str())?;
        }
        if let Some(k) = &o.open_key {
            m.str("open_key")?;
            m.str(k)?;
        }
        if let Some(groups) = &o.groups {
            m.str("groups")?;
            m.array(groups.len())?;
            for g in groups {
                m.group_spec(g)?;
            }
        }
        if let Some(w) = &o.workers {
            m.str("workers")?;
            m.workers(w)?;
        }
        Ok(m)
    }

    fn session_only(id: u64, op: &str, s: &Session) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, op, Some(s), 0)?;
        Ok(m)
    }

    pub fn attach(id: u64, s: &Session) -> Result<Message<'static>> {
        session_only(id, "attach", s)
    }

    pub fn info(id: u64, s: &Session, client: Option<&str>) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "info", Some(s), client.is_some() as usize)?;
        if let Some(c) = client {
            m.str("client")?;
            m.str(c)?;
        }
        Ok(m)
    }

    pub fn hparams(id: u64, s: &Session) -> Result<Message<'static>> {
        session_only(id, "hparams", s)
    }

    /// `group` None: every group.
    pub fn set_hparams(id: u64, s: &Session, h: &Hparams, group: Option<&str>) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "set_hparams", Some(s), 1 + group.is_some() as usize)?;
        m.str("hparams")?;
        m.hparams(h)?;
        if let Some(g) = group {
            m.str("group")?;
            m.str(g)?;
        }
        Ok(m)
    }

    /// `group` None: every group whose scheduler takes a metric.
    pub fn observe(id: u64, s: &Session, metric: f64, group: Option<&str>) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "observe", Some(s), 1 + group.is_some() as usize)?;
        m.str("metric")?;
        m.float(metric);
        if let Some(g) = group {
            m.str("group")?;
            m.str(g)?;
        }
        Ok(m)
    }

    pub fn close(id: u64, s: &Session) -> Result<Message<'static>> {
        session_only(id, "close", s)
    }

    pub fn export(id: u64, s: &Session) -> Result<Message<'static>> {
        session_only(id, "export", s)
    }

    /// `group` None: the daemon's default, `"default"`.
    pub fn register<'a>(
        id: u64,
        s: &Session,
        params: &[(&str, TensorRef<'a>)],
        group: Option<&str>,
    ) -> Result<Message<'a>> {
        let mut m = Message::new();
        m.envelope(id, "register", Some(s), 1 + group.is_some() as usize)?;
        m.str("params")?;
        m.tensors(params)?;
        if let Some(g) = group {
            m.str("group")?;
            m.str(g)?;
        }
        Ok(m)
    }

    fn check_seq(o: &StepOptions) -> Result<()> {
        if let Some(seq) = o.seq {
            if seq > 1u64 << 53 {
                return Err(Error::invalid("seq above 2^53"));
            }
        }
        if o.client.as_ref().is_some_and(|c| c.len() > 64) {
            return Err(Error::invalid("client id longer than 64 bytes"));
        }
        Ok(())
    }

    /// One plain `step` message. Options of a sliced step
    /// (`part_elements`, `parts_in_flight`) are [`Error::Invalid`] here:
    /// [`Client::step`](crate::Client::step) sends those, as
    /// [`step_part`] messages.
    pub fn step<'a>(id: u64, s: &Session, grads: &[(&str, TensorRef<'a>)], o: &StepOptions) -> Result<Message<'a>> {
        check_seq(o)?;
        if o.part_elements.is_some() || o.parts_in_flight.is_some() {
            return Err(Error::invalid(
                "part_elements and parts_in_flight make a sliced step, which Client::step sends as step_part messages",
            ));
        }
        let mut m = Message::new();
        let extra = 1
            + o.return_params.is_some() as usize
            + o.seq.is_some() as usize
            + o.client.is_some() as usize
            + o.clip_value.is_some() as usize
            + o.clip_norm.is_some() as usize
            + o.worker.is_some() as usize;
        m.envelope(id, "step", Some(s), extra)?;
        m.str("grads")?;
        m.tensors(grads)?;
        if let Some(r) = o.return_params {
            m.str("return")?;
            m.bool(r);
        }
        if let Some(seq) = o.seq {
            m.str("seq")?;
            m.uint(seq);
        }
        if let Some(c) = &o.client {
            m.str("client")?;
            m.str(c)?;
        }
        if let Some(v) = o.clip_value {
            m.str("clip_value")?;
            m.float(v);
        }
        if let Some(c) = &o.clip_norm {
            m.str("clip_norm")?;
            m.clip_norm(c)?;
        }
        if let Some(w) = &o.worker {
            m.str("worker")?;
            m.str(w)?;
        }
        Ok(m)
    }

    /// Part `index` of `count` of a sliced step (docs/protocol.md, `step`,
    /// "Sliced steps"): `seq` (required) and `client`, `return_params` and
    /// `clip_value` from `o`. `clip_norm`, `worker`, `part_elements` and
    /// `parts_in_flight` have no place in a part ([`Error::Invalid`]).
    /// Nothing here checks that the parts fit together: the daemon does.
    pub fn step_part<'a>(
        id: u64,
        s: &Session,
        grads: &[(&str, PartGrad<'a>)],
        index: u32,
        count: u32,
        o: &StepOptions,
    ) -> Result<Message<'a>> {
        check_seq(o)?;
        let seq = match o.seq {
            Some(seq) if seq > 0 => seq,
            _ => {
                return Err(Error::invalid(
                    "a part of a sliced step needs seq (StepOptions::seq): every part carries it, and a retry \
                     with the same seq completes a step that was cut short",
                ))
            }
        };
        if o.clip_norm.is_some() {
            return Err(Error::invalid(
                "clip_norm cannot be used with a sliced step (it needs every gradient at once)",
            ));
        }
        if o.worker.is_some() {
            return Err(Error::invalid("a session with workers takes no sliced steps"));
        }
        if o.part_elements.is_some() || o.parts_in_flight.is_some() {
            return Err(Error::invalid("part_elements and parts_in_flight are for Client::step, not for one part"));
        }
        let mut m = Message::new();
        let extra =
            3 + o.return_params.is_some() as usize + o.client.is_some() as usize + o.clip_value.is_some() as usize;
        m.envelope(id, "step", Some(s), extra)?;
        m.str("grads")?;
        m.part_grads(grads)?;
        m.str("part")?;
        m.map(2)?;
        m.str("index")?;
        m.uint(index.into());
        m.str("count")?;
        m.uint(count.into());
        if let Some(r) = o.return_params {
            m.str("return")?;
            m.bool(r);
        }
        m.str("seq")?;
        m.uint(seq);
        if let Some(c) = &o.client {
            m.str("client")?;
            m.str(c)?;
        }
        if let Some(v) = o.clip_value {
            m.str("clip_value")?;
            m.float(v);
        }
        Ok(m)
    }

    /// `client` None: the daemon's default, `""`.
    pub fn abandon_step(id: u64, s: &Session, seq: u64, client: Option<&str>) -> Result<Message<'static>> {
        if seq > 1u64 << 53 {
            return Err(Error::invalid("seq above 2^53"));
        }
        let mut m = Message::new();
        m.envelope(id, "abandon_step", Some(s), 1 + client.is_some() as usize)?;
        m.str("seq")?;
        m.uint(seq);
        if let Some(c) = client {
            m.str("client")?;
            m.str(c)?;
        }
        Ok(m)
    }

    fn names_op(id: u64, op: &str, s: &Session, names: Option<&[&str]>) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, op, Some(s), names.is_some() as usize)?;
        if let Some(n) = names {
            m.str("names")?;
            m.names(n)?;
        }
        Ok(m)
    }

    pub fn pull(id: u64, s: &Session, names: Option<&[&str]>) -> Result<Message<'static>> {
        names_op(id, "pull", s, names)
    }

    /// `pull` as member `worker` (None: a plain pull).
    pub fn pull_as_worker(id: u64, s: &Session, worker: Option<&str>, names: Option<&[&str]>) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "pull", Some(s), names.is_some() as usize + worker.is_some() as usize)?;
        if let Some(n) = names {
            m.str("names")?;
            m.names(n)?;
        }
        if let Some(w) = worker {
            m.str("worker")?;
            m.str(w)?;
        }
        Ok(m)
    }

    fn worker_op(id: u64, op: &str, s: &Session, worker: &str) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, op, Some(s), 1)?;
        m.str("worker")?;
        m.str(worker)?;
        Ok(m)
    }

    pub fn join(id: u64, s: &Session, worker: &str) -> Result<Message<'static>> {
        worker_op(id, "join", s, worker)
    }

    pub fn leave(id: u64, s: &Session, worker: &str) -> Result<Message<'static>> {
        worker_op(id, "leave", s, worker)
    }

    pub fn state(id: u64, s: &Session, names: Option<&[&str]>) -> Result<Message<'static>> {
        names_op(id, "state", s, names)
    }

    /// `hparams` None: the new optimizer keeps the session's values of the
    /// keys it shares and takes its defaults for the rest.
    pub fn switch(id: u64, s: &Session, optimizer: &str, hparams: Option<&Hparams>) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "switch", Some(s), 1 + hparams.is_some() as usize)?;
        m.str("optimizer")?;
        m.str(optimizer)?;
        if let Some(h) = hparams {
            m.str("hparams")?;
            m.hparams(h)?;
        }
        Ok(m)
    }

    pub fn reload(id: u64, admin_token: &str) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "reload", None, 1)?;
        m.str("admin_token")?;
        m.str(admin_token)?;
        Ok(m)
    }

    pub fn load(id: u64, path: &str, admin_token: &str) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "load", None, 2)?;
        m.str("path")?;
        m.str(path)?;
        m.str("admin_token")?;
        m.str(admin_token)?;
        Ok(m)
    }

    pub fn drop(id: u64, session: &str, admin_token: &str) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "drop", None, 2)?;
        m.str("session")?;
        m.str(session)?;
        m.str("admin_token")?;
        m.str(admin_token)?;
        Ok(m)
    }

    pub fn shutdown(id: u64, admin_token: &str) -> Result<Message<'static>> {
        let mut m = Message::new();
        m.envelope(id, "shutdown", None, 1)?;
        m.str("admin_token")?;
        m.str(admin_token)?;
        Ok(m)
    }

    pub fn import<'a>(id: u64, snapshot: &'a [u8], o: &ImportOptions) -> Result<Message<'a>> {
        let mut m = Message::new();
        let extra = 1 + o.session.is_some() as usize + o.durability.is_some() as usize;
        m.envelope(id, "import", None, extra)?;
        m.str("snapshot")?;
        m.bin(snapshot)?;
        if let Some(name) = &o.session {
            m.str("session")?;
            m.str(name)?;
        }
        if let Some(d) = o.durability {
            m.str("durability")?;
            m.str(d.as_str())?;
        }
        Ok(m)
    }
}

/// A decoded map with string keys, taken apart key by key; `ctx` names
/// where it sits in the reply, for error messages.
struct Fields {
    map: BTreeMap<String, Value>,
    ctx: String,
}

fn bad(ctx: &str, what: &str) -> Error {
    Error::protocol(format!("{ctx}: {what}"))
}

impl Fields {
    fn from_value(v: Value, ctx: &str) -> Result<Fields> {
        let pairs = match v {
            Value::Map(p) => p,
            _ => return Err(bad(ctx, "not a map")),
        };
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            let k = match k {
                Value::String(s) => s.into_str().ok_or_else(|| bad(ctx, "key is not UTF-8"))?,
                _ => return Err(bad(ctx, "a key is not a string")),
            };
            if map.contains_key(&k) {
                return Err(bad(ctx, &format!("key {k:?} given twice")));
            }
            map.insert(k, v);
        }
        Ok(Fields { map, ctx: ctx.to_owned() })
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{}", self.ctx, key)
    }

    fn opt(&mut self, key: &str) -> Option<(Value, String)> {
        let p = self.path(key);
        self.map.remove(key).map(|v| (v, p))
    }

    fn req(&mut self, key: &str) -> Result<(Value, String)> {
        self.opt(key).ok_or_else(|| bad(&self.ctx, &format!("missing key {key:?}")))
    }

    fn str(&mut self, key: &str) -> Result<String> {
        let (v, p) = self.req(key)?;
        as_str(v, &p)
    }

    fn opt_str_or_nil(&mut self, key: &str) -> Result<Option<String>> {
        let (v, p) = self.req(key)?;
        match v {
            Value::Nil => Ok(None),
            v => as_str(v, &p).map(Some),
        }
    }

    fn uint(&mut self, key: &str) -> Result<u64> {
        let (v, p) = self.req(key)?;
        as_uint(&v, &p)
    }

    fn float(&mut self, key: &str) -> Result<f64> {
        let (v, p) = self.req(key)?;
        as_float(&v, &p)
    }

    fn bool(&mut self, key: &str) -> Result<bool> {
        let (v, p) = self.req(key)?;
        match v {
            Value::Boolean(b) => Ok(b),
            _ => Err(bad(&p, "not a bool")),
        }
    }

    fn array(&mut self, key: &str) -> Result<(Vec<Value>, String)> {
        let (v, p) = self.req(key)?;
        match v {
            Value::Array(a) => Ok((a, p)),
            _ => Err(bad(&p, "not an array")),
        }
    }

    fn fields(&mut self, key: &str) -> Result<Fields> {
        let (v, p) = self.req(key)?;
        Fields::from_value(v, &p)
    }

    fn hparams(&mut self, key: &str) -> Result<Hparams> {
        let f = self.fields(key)?;
        let mut out = Hparams::new();
        for (k, v) in f.map {
            let p = format!("{}.{}", f.ctx, k);
            out.insert(k, as_hvalue(&v, &p)?);
        }
        Ok(out)
    }

    fn tensors(&mut self, key: &str) -> Result<BTreeMap<String, Tensor>> {
        let f = self.fields(key)?;
        tensor_map(f)
    }

    /// A map str → float (group name → lr or norm).
    fn floats(&mut self, key: &str) -> Result<BTreeMap<String, f64>> {
        let f = self.fields(key)?;
        float_map(f)
    }

    fn opt_floats(&mut self, key: &str) -> Result<Option<BTreeMap<String, f64>>> {
        match self.opt(key) {
            None => Ok(None),
            Some((v, p)) => float_map(Fields::from_value(v, &p)?).map(Some),
        }
    }
}

fn float_map(f: Fields) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (k, v) in f.map {
        let p = format!("{}.{}", f.ctx, k);
        out.insert(k, as_float(&v, &p)?);
    }
    Ok(out)
}

fn as_str(v: Value, p: &str) -> Result<String> {
    match v {
        Value::String(s) => s.into_str().ok_or_else(|| bad(p, "not UTF-8")),
        _ => Err(bad(p, "not a string")),
    }
}

fn as_uint(v: &Value, p: &str) -> Result<u64> {
    match v {
        Value::Integer(i) => i.as_u64().ok_or_else(|| bad(p, "negative")),
        _ => Err(bad(p, "not an unsigned integer")),
    }
}

// The protocol lets an integer stand where a float is expected.
fn as_float(v: &Value, p: &str) -> Result<f64> {
    match v {
        Value::F64(f) => Ok(*f),
        Value::F32(f) => Ok(*f as f64),
        Value::Integer(i) => i.as_f64().ok_or_else(|| bad(p, "not a number")),
        _ => Err(bad(p, "not a number")),
    }
}

fn as_hvalue(v: &Value, p: &str) -> Result<HValue> {
    match v {
        Value::Boolean(b) => Ok(HValue::Bool(*b)),
        Value::Integer(i) => i.as_i64().map(HValue::Int).ok_or_else(|| bad(p, "integer out of range")),
        Value::F64(f) => Ok(HValue::Float(*f)),
        Value::F32(f) => Ok(HValue::Float(*f as f64)),
        _ => Err(bad(p, "not a bool, integer or float")),
    }
}

fn as_shape(v: Value, p: &str) -> Result<Vec<u64>> {
    match v {
        Value::Array(a) => a.iter().map(|d| as_uint(d, p)).collect(),
        _ => Err(bad(p, "not an array")),
    }
}

fn as_tensor(v: Value, p: &str) -> Result<Tensor> {
    let mut f = Fields::from_value(v, p)?;
    let dtype = f.str("dtype")?;
    let dtype = Dtype::parse(&dtype).ok_or_else(|| bad(p, &format!("unknown dtype {dtype:?}")))?;
    let (shape, sp) = f.req("shape")?;
    let shape = as_shape(shape, &sp)?;
    let (data, dp) = f.req("data")?;
    let data = match data {
        Value::Binary(b) => b,
        _ => return Err(bad(&dp, "not binary")),
    };
    let want = byte_len(dtype, &shape).ok_or_else(|| bad(p, "shape too large"))?;
    if data.len() != want {
        return Err(bad(
            p,
            &format!("{} data bytes for {} shape {:?} ({} expected)", data.len(), dtype.as_str(), shape, want),
        ));
    }
    Tensor::from_bytes(dtype, shape, data).map_err(|e| bad(p, &e.to_string()))
}

fn tensor_map(f: Fields) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (k, v) in f.map {
        let p = format!("{}.{}", f.ctx, k);
        out.insert(k, as_tensor(v, &p)?);
    }
    Ok(out)
}

/// Reply parsers, one per op. Each takes the reply bytes and the id of the
/// request they answer, checks the envelope (one msgpack map and nothing
/// after it, `v` = 1, the same `id`, `ok`), turns an error reply into
/// [`Error::Server`], and checks every result key's presence and type.
pub mod reply {
    use super::*;

    /// The envelope: on success, the remaining (result) keys.
    fn envelope(bytes: &[u8], id: u64) -> Result<Fields> {
        let mut rd = bytes;
        let v = rmpv::decode::read_value(&mut rd).map_err(|e| Error::protocol(format!("reply is not msgpack: {e}")))?;
        if !rd.is_empty() {
            return Err(Error::protocol(format!("{} bytes after the reply's msgpack value", rd.len())));
        }
        let mut f = Fields::from_value(v, "reply")?;
        let version = f.uint("v")?;
        if version != PROTOCOL_VERSION {
            return Err(Error::protocol(format!("reply has protocol version {version}")));
        }
        let got = f.uint("id")?;
        let ok = f.bool("ok")?;
        // A request the daemon could not decode is answered with id 0
        // (protocol.md §2): it never learnt ours. The SP layer has already
        // matched the reply to this request.
        if got != id && (ok || got != 0) {
            return Err(Error::protocol(format!("reply id {got} answers no request of ours (sent {id})")));
        }
        if ok {
            return Ok(f);
        }
        let (code, p) = f.req("code")?;
        let code = match code {
            Value::Integer(i) => i.as_i64().ok_or_else(|| bad(&p, "out of range"))?,
            _ => return Err(bad(&p, "not an integer")),
        };
        let name = f.str("error")?;
        let message = f.str("message")?;
        Err(Error::Server { code, name, message })
    }

    /// For ops whose reply has no keys of its own (`close`); also checks any
    /// other reply's envelope alone.
    pub fn empty(bytes: &[u8], id: u64) -> Result<()> {
        envelope(bytes, id).map(|_| ())
    }

    pub fn hello(bytes: &[u8], id: u64) -> Result<Hello> {
        let mut f = envelope(bytes, id)?;
        let (abi, p) = f.array("abi")?;
        if abi.len() != 2 {
            return Err(bad(&p, "not [major, minor]"));
        }
        Ok(Hello {
            server: f.str("server")?,
            version: f.str("version")?,
            protocol: f.uint("protocol")?,
            abi: (as_uint(&abi[0], &p)?, as_uint(&abi[1], &p)?),
            max_message: f.uint("max_message")?,
        })
    }

    fn hparam_decl(v: Value, p: &str) -> Result<HparamDecl> {
        let mut f = Fields::from_value(v, p)?;
        let (default, dp) = f.req("default")?;
        Ok(HparamDecl {
            key: f.str("key")?,
            kind: f.str("type")?,
            required: f.bool("required")?,
            mutable: f.bool("mutable")?,
            min: f.float("min")?,
            max: f.float("max")?,
            min_exclusive: f.bool("min_exclusive")?,
            max_exclusive: f.bool("max_exclusive")?,
            default: match default {
                Value::Nil => None,
                v => Some(as_hvalue(&v, &dp)?),
            },
            doc: f.str("doc")?,
        })
    }

    fn slot_decl(v: Value, p: &str) -> Result<SlotDecl> {
        let mut f = Fields::from_value(v, p)?;
        Ok(SlotDecl {
            key: f.str("key")?,
            dtype: f.str("dtype")?,
            shape: f.str("shape")?,
            enabled_by: f.opt_str_or_nil("enabled_by")?,
            doc: f.str("doc")?,
        })
    }

    fn plugin(v: Value, p: &str) -> Result<PluginInfo> {
        let mut f = Fields::from_value(v, p)?;
        let (hp, hpp) = f.array("hparams")?;
        let hparams = hp
            .into_iter()
            .enumerate()
            .map(|(i, v)| hparam_decl(v, &format!("{hpp}[{i}]")))
            .collect::<Result<_>>()?;
        let slots = match f.opt("slots") {
            None => None,
            Some((Value::Array(a), sp)) => Some(
                a.into_iter()
                    .enumerate()
                    .map(|(i, v)| slot_decl(v, &format!("{sp}[{i}]")))
                    .collect::<Result<_>>()?,
            ),
            Some((_, sp)) => return Err(bad(&sp, "not an array")),
        };
        let dtypes = match f.opt("dtypes") {
            None => None,
            Some((Value::Array(a), dp)) => Some(a.into_iter().map(|v| as_str(v, &dp)).collect::<Result<_>>()?),
            Some((_, dp)) => return Err(bad(&dp, "not an array")),
        };
        let sliced = match f.opt("sliced") {
            None => None,
            Some((Value::Boolean(b), _)) => Some(b),
            Some((_, p)) => return Err(bad(&p, "not a bool")),
        };
        Ok(PluginInfo {
            id: f.str("id")?,
            kind: f.str("kind")?,
            version: f.str("version")?,
            description: f.str("description")?,
            hparams,
            slots,
            dtypes,
            sliced,
        })
    }

    pub fn plugins(bytes: &[u8], id: u64) -> Result<Vec<PluginInfo>> {
        let mut f = envelope(bytes, id)?;
        let (a, p) = f.array("plugins")?;
        a.into_iter().enumerate().map(|(i, v)| plugin(v, &format!("{p}[{i}]"))).collect()
    }

    pub fn open(bytes: &[u8], id: u64) -> Result<Opened> {
        let mut f = envelope(bytes, id)?;
        Ok(Opened {
            session: Session { name: f.str("session")?, token: f.str("token")? },
            lr: f.float("lr")?,
            existing: f.bool("existing")?,
        })
    }

    fn param_info(v: Value, p: &str) -> Result<ParamInfo> {
        let mut f = Fields::from_value(v, p)?;
        let name = f.str("name")?;
        let dtype = f.str("dtype")?;
        let dtype = Dtype::parse(&dtype).ok_or_else(|| bad(p, &format!("unknown dtype {dtype:?}")))?;
        let (shape, sp) = f.req("shape")?;
        Ok(ParamInfo { name, group: f.str("group")?, dtype, shape: as_shape(shape, &sp)?, steps: f.uint("steps")? })
    }

    fn scheduler_info(v: Value, p: &str) -> Result<SchedulerInfo> {
        let mut f = Fields::from_value(v, p)?;
        Ok(SchedulerInfo { scheduler: f.str("scheduler")?, sched_hparams: f.hparams("sched_hparams")? })
    }

    /// A combined schedule's `schedulers` and `milestones`, each None when
    /// absent.
    #[allow(clippy::type_complexity)]
    fn combined(f: &mut Fields) -> Result<(Option<Vec<SchedulerInfo>>, Option<Vec<u64>>)> {
        let schedulers = match f.opt("schedulers") {
            None => None,
            Some((Value::Array(a), p)) => Some(
                a.into_iter()
                    .enumerate()
                    .map(|(i, v)| scheduler_info(v, &format!("{p}[{i}]")))
                    .collect::<Result<_>>()?,
            ),
            Some((_, p)) => return Err(bad(&p, "not an array")),
        };
        let milestones = match f.opt("milestones") {
            None => None,
            Some((v, p)) => Some(as_shape(v, &p)?),
        };
        Ok((schedulers, milestones))
    }

    /// `lookahead`: nil (or absent, from a daemon before Lookahead) is off.
    fn lookahead(f: &mut Fields) -> Result<Option<Lookahead>> {
        match f.opt("lookahead") {
            None | Some((Value::Nil, _)) => Ok(None),
            Some((v, p)) => {
                let mut l = Fields::from_value(v, &p)?;
                Ok(Some(Lookahead { k: l.uint("k")?, alpha: l.float("alpha")? }))
            }
        }
    }

    fn group_info(v: Value, p: &str) -> Result<GroupInfo> {
        let mut f = Fields::from_value(v, p)?;
        let (schedulers, milestones) = combined(&mut f)?;
        Ok(GroupInfo {
            name: f.str("name")?,
            scheduler: f.opt_str_or_nil("scheduler")?,
            schedulers,
            milestones,
            hparams: f.hparams("hparams")?,
            sched_hparams: f.hparams("sched_hparams")?,
            base_lr: f.float("base_lr")?,
            lr: f.float("lr")?,
            params: f.uint("params")?,
        })
    }

    fn enum_key<T>(f: &mut Fields, key: &str, parse: fn(&str) -> Option<T>) -> Result<Option<T>> {
        match f.opt(key) {
            None => Ok(None),
            Some((v, p)) => {
                let s = as_str(v, &p)?;
                parse(&s).map(Some).ok_or_else(|| bad(&p, &format!("unknown value {s:?}")))
            }
        }
    }

    fn opt_uint(f: &mut Fields, key: &str) -> Result<Option<u64>> {
        match f.opt(key) {
            None => Ok(None),
            Some((v, p)) => as_uint(&v, &p).map(Some),
        }
    }

    fn worker_info(v: Value, p: &str) -> Result<WorkerInfo> {
        let mut f = Fields::from_value(v, p)?;
        Ok(WorkerInfo {
            name: f.str("name")?,
            rank: f.uint("rank")?,
            pushes: f.uint("pushes")?,
            staleness: f.uint("staleness")?,
            waiting: f.bool("waiting")?,
        })
    }

    /// `workers` of `info`, `join` and `leave`.
    fn workers_info(v: Value, p: &str) -> Result<WorkersInfo> {
        let mut f = Fields::from_value(v, p)?;
        let mode = f.str("mode")?;
        let mode = WorkersMode::parse(&mode).ok_or_else(|| bad(&f.path("mode"), &format!("unknown value {mode:?}")))?;
        let (members, mp) = f.array("members")?;
        Ok(WorkersInfo {
            settings: Workers {
                mode,
                count: opt_uint(&mut f, "count")?,
                reduce: enum_key(&mut f, "reduce", Reduce::parse)?,
                timeout_ms: opt_uint(&mut f, "timeout_ms")?,
                on_timeout: enum_key(&mut f, "on_timeout", OnTimeout::parse)?,
                max_staleness: opt_uint(&mut f, "max_staleness")?,
            },
            members: members
                .into_iter()
                .enumerate()
                .map(|(i, v)| worker_info(v, &format!("{mp}[{i}]")))
                .collect::<Result<_>>()?,
            round_pushes: opt_uint(&mut f, "round_pushes")?,
        })
    }

    fn groups(f: &mut Fields) -> Result<Vec<GroupInfo>> {
        let (a, p) = f.array("groups")?;
        a.into_iter().enumerate().map(|(i, v)| group_info(v, &format!("{p}[{i}]"))).collect()
    }

    /// `info` and `attach`.
    pub fn info(bytes: &[u8], id: u64) -> Result<SessionInfo> {
        let mut f = envelope(bytes, id)?;
        let client_seq = match f.opt("client_seq") {
            None => None,
            Some((v, p)) => Some(as_uint(&v, &p)?),
        };
        let durability = f.str("durability")?;
        let durability = Durability::parse(&durability)
            .ok_or_else(|| Error::protocol(format!("reply.durability: unknown value {durability:?}")))?;
        let (params, pp) = f.array("params")?;
        let lookahead = lookahead(&mut f)?;
        let (schedulers, milestones) = combined(&mut f)?;
        let workers = match f.opt("workers") {
            None | Some((Value::Nil, _)) => None,
            Some((v, p)) => Some(workers_info(v, &p)?),
        };
        let pending_step = match f.opt("pending_step") {
            None | Some((Value::Nil, _)) => None,
            Some((v, p)) => {
                let mut ps = Fields::from_value(v, &p)?;
                Some(PendingStep {
                    client: ps.str("client")?,
                    seq: ps.uint("seq")?,
                    count: ps.uint("count")?,
                    applied: ps.uint("applied")?,
                })
            }
        };
        Ok(SessionInfo {
            client_seq,
            session: f.str("session")?,
            durability,
            optimizer: f.str("optimizer")?,
            optimizer_version: f.str("optimizer_version")?,
            lookahead,
            scheduler: f.opt_str_or_nil("scheduler")?,
            schedulers,
            milestones,
            hparams: f.hparams("hparams")?,
            sched_hparams: f.hparams("sched_hparams")?,
            base_lr: f.float("base_lr")?,
            lr: f.float("lr")?,
            steps: f.uint("steps")?,
            params: params
                .into_iter()
                .enumerate()
                .map(|(i, v)| param_info(v, &format!("{pp}[{i}]")))
                .collect::<Result<_>>()?,
            groups: groups(&mut f)?,
            workers,
            pending_step,
        })
    }

    pub fn join(bytes: &[u8], id: u64) -> Result<Joined> {
        let mut f = envelope(bytes, id)?;
        let (w, p) = f.req("workers")?;
        Ok(Joined { rank: f.uint("rank")?, steps: f.uint("steps")?, workers: workers_info(w, &p)? })
    }

    pub fn leave(bytes: &[u8], id: u64) -> Result<Left> {
        let mut f = envelope(bytes, id)?;
        let (w, p) = f.req("workers")?;
        Ok(Left { steps: f.uint("steps")?, workers: workers_info(w, &p)? })
    }

    /// `hparams` and `set_hparams`.
    pub fn hparams(bytes: &[u8], id: u64) -> Result<HparamsInfo> {
        let mut f = envelope(bytes, id)?;
        Ok(HparamsInfo {
            hparams: f.hparams("hparams")?,
            sched_hparams: f.hparams("sched_hparams")?,
            base_lr: f.float("base_lr")?,
            lr: f.float("lr")?,
            groups: groups(&mut f)?,
        })
    }

    pub fn observe(bytes: &[u8], id: u64) -> Result<Observed> {
        let mut f = envelope(bytes, id)?;
        Ok(Observed { lr: f.float("lr")?, lrs: f.floats("lrs")? })
    }

    pub fn sessions(bytes: &[u8], id: u64) -> Result<Vec<SessionSummary>> {
        let mut f = envelope(bytes, id)?;
        let (a, p) = f.array("sessions")?;
        a.into_iter()
            .enumerate()
            .map(|(i, v)| {
                let mut s = Fields::from_value(v, &format!("{p}[{i}]"))?;
                Ok(SessionSummary {
                    session: s.str("session")?,
                    optimizer: s.str("optimizer")?,
                    scheduler: s.opt_str_or_nil("scheduler")?,
                    params: s.uint("params")?,
                    steps: s.uint("steps")?,
                })
            })
            .collect()
    }

    pub fn register(bytes: &[u8], id: u64) -> Result<u64> {
        envelope(bytes, id)?.uint("registered")
    }

    pub fn step(bytes: &[u8], id: u64) -> Result<StepResult> {
        let mut f = envelope(bytes, id)?;
        let params = match f.opt("params") {
            None => None,
            Some((v, p)) => Some(tensor_map(Fields::from_value(v, &p)?)?),
        };
        let grad_norm = match (f.opt("grad_norm"), f.opt_floats("grad_norms")?) {
            (None, None) => None,
            (Some((v, p)), None) => Some(GradNorm::Total(as_float(&v, &p)?)),
            (None, Some(m)) => Some(GradNorm::PerGroup(m)),
            (Some(_), Some(_)) => return Err(bad("reply", "both grad_norm and grad_norms")),
        };
        Ok(StepResult {
            steps: f.uint("steps")?,
            lr: f.float("lr")?,
            next_lr: f.float("next_lr")?,
            duplicate: f.bool("duplicate")?,
            lrs: f.opt_floats("lrs")?,
            next_lrs: f.opt_floats("next_lrs")?,
            grad_norm,
            params,
            worker: match f.opt("worker") {
                None => None,
                Some((v, p)) => Some(as_str(v, &p)?),
            },
            pushes: opt_uint(&mut f, "pushes")?,
            staleness: opt_uint(&mut f, "staleness")?,
            combined: opt_uint(&mut f, "combined")?,
            lead: opt_uint(&mut f, "lead")?,
            waited: match f.opt("waited") {
                None => None,
                Some((Value::Boolean(b), _)) => Some(b),
                Some((_, p)) => return Err(bad(&p, "not a bool")),
            },
        })
    }

    fn param_range(v: Value, p: &str) -> Result<ParamRange> {
        let mut f = Fields::from_value(v, p)?;
        let offset = f.uint("offset")?;
        let (values, vp) = f.req("values")?;
        let values = as_tensor(values, &vp)?;
        if values.shape().len() != 1 {
            return Err(bad(&vp, &format!("shape {:?}, not 1-D", values.shape())));
        }
        Ok(ParamRange { offset, values })
    }

    /// A part of a sliced step.
    pub fn step_part(bytes: &[u8], id: u64) -> Result<StepPartResult> {
        let mut f = envelope(bytes, id)?;
        let params = match f.opt("params") {
            None => None,
            Some((v, p)) => {
                let m = Fields::from_value(v, &p)?;
                let mut out = BTreeMap::new();
                for (k, v) in m.map {
                    let p = format!("{}.{}", m.ctx, k);
                    let r = param_range(v, &p)?;
                    out.insert(k, r);
                }
                Some(out)
            }
        };
        Ok(StepPartResult {
            steps: f.uint("steps")?,
            lr: f.float("lr")?,
            next_lr: f.float("next_lr")?,
            duplicate: f.bool("duplicate")?,
            complete: f.bool("complete")?,
            parts: f.uint("parts")?,
            lrs: f.opt_floats("lrs")?,
            next_lrs: f.opt_floats("next_lrs")?,
            params,
        })
    }

    pub fn abandon_step(bytes: &[u8], id: u64) -> Result<Abandoned> {
        let mut f = envelope(bytes, id)?;
        Ok(Abandoned {
            steps: f.uint("steps")?,
            lr: f.float("lr")?,
            next_lr: f.float("next_lr")?,
            lrs: f.opt_floats("lrs")?,
            next_lrs: f.opt_floats("next_lrs")?,
            parts: f.uint("parts")?,
        })
    }

    pub fn pull(bytes: &[u8], id: u64) -> Result<BTreeMap<String, Tensor>> {
        envelope(bytes, id)?.tensors("params")
    }

    pub fn state(bytes: &[u8], id: u64) -> Result<StateMap> {
        let f = envelope(bytes, id)?.fields("state")?;
        let mut out = StateMap::new();
        for (k, v) in f.map {
            let p = format!("{}.{}", f.ctx, k);
            out.insert(k, tensor_map(Fields::from_value(v, &p)?)?);
        }
        Ok(out)
    }

    pub fn export(bytes: &[u8], id: u64) -> Result<Vec<u8>> {
        let (v, p) = envelope(bytes, id)?.req("snapshot")?;
        match v {
            Value::Binary(b) => Ok(b),
            _ => Err(bad(&p, "not binary")),
        }
    }

    pub fn switch(bytes: &[u8], id: u64) -> Result<Switched> {
        let mut f = envelope(bytes, id)?;
        let (carried, p) = f.array("carried")?;
        Ok(Switched {
            optimizer: f.str("optimizer")?,
            optimizer_version: f.str("optimizer_version")?,
            carried: carried.into_iter().map(|v| as_str(v, &p)).collect::<Result<_>>()?,
        })
    }

    fn plugin_load(v: Value, p: &str) -> Result<PluginLoad> {
        let mut f = Fields::from_value(v, p)?;
        let path = f.str("path")?;
        let outcome = if f.bool("loaded")? {
            LoadOutcome::Loaded { id: f.str("id")?, version: f.str("version")? }
        } else {
            LoadOutcome::Refused { error: f.str("error")? }
        };
        Ok(PluginLoad { path, outcome })
    }

    /// `reload` and `load`.
    pub fn reload(bytes: &[u8], id: u64) -> Result<Vec<PluginLoad>> {
        let mut f = envelope(bytes, id)?;
        let (a, p) = f.array("plugins")?;
        a.into_iter().enumerate().map(|(i, v)| plugin_load(v, &format!("{p}[{i}]"))).collect()
    }

    pub fn import(bytes: &[u8], id: u64) -> Result<Imported> {
        let mut f = envelope(bytes, id)?;
        Ok(Imported { session: Session { name: f.str("session")?, token: f.str("token")? }, steps: f.uint("steps")? })
    }
}
