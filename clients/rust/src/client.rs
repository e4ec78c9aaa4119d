//! The blocking client: one connection, one request at a time.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sp::{parse_url, Address, Pipe, TlsConfig};
use crate::tensor::{Dtype, Tensor, TensorRef};
use crate::types::*;
use crate::wire::{reply, request, slice_grads, Message};

/// The daemon's default address.
pub const DEFAULT_URL: &str = "tcp://127.0.0.1:7878";

/// A connection to one daemon. Calls are blocking and bounded by the
/// client's timeout (30 s unless set), which covers connecting, sending and
/// receiving. After a transport or protocol error the connection is dropped
/// and the next call dials again; the failed call itself is not re-sent
/// (an unsequenced `step` sent twice is applied twice).
///
/// For several requests in flight, use several clients (a sliced step,
/// [`Client::step`] with [`StepOptions::part_elements`], is the one call
/// that keeps several of its own in flight on the connection).
pub struct Client {
    addr: Address,
    tls: Option<TlsConfig>,
    pipe: Option<Pipe>,
    timeout: Duration,
    max_recv: u64,
    next_id: u64,
    next_sp_id: u32,
}

impl Client {
    /// Connects to `url` (`tcp://HOST:PORT` or `ipc:///PATH`) within the
    /// default timeout.
    pub fn connect(url: &str) -> Result<Client> {
        Client::connect_timeout(url, Duration::from_secs(30))
    }

    /// Connects, and uses `timeout` for this and every later call.
    pub fn connect_timeout(url: &str, timeout: Duration) -> Result<Client> {
        let mut c = Client::new(url, timeout)?;
        c.ensure_pipe(Instant::now() + timeout)?;
        Ok(c)
    }

    /// Connects to `tls+tcp://HOST:PORT` with `tls` (the TLS handshake and
    /// the SP greeting included) within `timeout`, used for every later call
    /// too. A daemon that refuses this client's certificate, or whose
    /// certificate `tls` does not trust, fails this with a transport error
    /// that says so.
    pub fn connect_tls(url: &str, tls: TlsConfig, timeout: Duration) -> Result<Client> {
        let mut c = Client::new_tls(url, tls, timeout)?;
        c.ensure_pipe(Instant::now() + timeout)?;
        Ok(c)
    }

    /// A `tls+tcp://` client that dials on its first call.
    pub fn new_tls(url: &str, tls: TlsConfig, timeout: Duration) -> Result<Client> {
        let mut c = Client::new(url, timeout)?;
        c.tls = Some(tls);
        Ok(c)
    }

    /// A client that dials on its first call. A `tls+tcp://` URL needs
    /// [`Client::new_tls`].
    pub fn new(url: &str, timeout: Duration) -> Result<Client> {
        Ok(Client {
            addr: parse_url(url)?,
            tls: None,
            pipe: None,
            timeout,
            max_recv: 0,
            next_id: 1,
            // Any start works; a varying one keeps a late reply from a
            // previous client on a reused connection from matching.
            next_sp_id: std::process::id().wrapping_mul(2654435761),
        })
    }

    /// The timeout of each later call.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls made through the returned guard use `timeout`; the client's own
    /// comes back when the guard is dropped:
    /// `client.with_timeout(Duration::from_secs(2)).hello(None)`.
    pub fn with_timeout(&mut self, timeout: Duration) -> TimeoutGuard<'_> {
        let saved = std::mem::replace(&mut self.timeout, timeout);
        TimeoutGuard { client: self, saved }
    }

    /// Refuse replies larger than `bytes` (0, the default: no limit, as
    /// protocol.md asks of clients).
    pub fn set_max_reply(&mut self, bytes: u64) {
        self.max_recv = bytes;
    }

    /// Drops the connection (sessions stay on the daemon); the next call
    /// dials again.
    pub fn disconnect(&mut self) {
        self.pipe = None;
    }

    fn ensure_pipe(&mut self, deadline: Instant) -> Result<&mut Pipe> {
        if self.pipe.is_none() {
            self.pipe = Some(Pipe::connect(&self.addr, self.tls.as_ref(), deadline)?);
        }
        Ok(self.pipe.as_mut().expect("just set"))
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// One round trip: `build` makes the request for an id, `parse` checks
    /// the reply against it.
    fn call<'a, T>(
        &mut self,
        build: impl FnOnce(u64) -> Result<Message<'a>>,
        parse: impl FnOnce(&[u8], u64) -> Result<T>,
    ) -> Result<T> {
        let id = self.next_id();
        let msg = build(id)?;
        let deadline = Instant::now() + self.timeout;
        let sp_id = self.next_sp_id;
        self.next_sp_id = self.next_sp_id.wrapping_add(1);
        let max_recv = self.max_recv;
        let body = self.ensure_pipe(deadline).and_then(|p| p.request(sp_id, &msg, deadline, max_recv));
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                // The stream is mid-message or dead; start clean next time.
                self.pipe = None;
                return Err(e);
            }
        };
        let out = parse(&body, id);
        if matches!(out, Err(Error::Protocol(_))) {
            self.pipe = None;
        }
        out
    }

    /// `count` round trips on the one connection, up to `window` requests in
    /// flight at once: `build(id, i)` makes request `i` (when it is to be
    /// sent, in order), `parse(reply, id, i)` checks its reply; the results
    /// come back in request order whatever the order of the replies. Each
    /// request is bounded by the timeout from when it is sent.
    ///
    /// An error reply ([`Error::Server`]) stops the sending; the replies of
    /// the requests in flight are still read (their results dropped, their
    /// errors too unless from an earlier request), so that the connection
    /// stays in step, and the error of the earliest request that had one is
    /// returned. Any other error (a transport or protocol error, a request
    /// that cannot be built) is returned at once and drops the connection:
    /// whether the requests still in flight were applied is unknown.
    fn pipeline<'a, T>(
        &mut self,
        count: usize,
        window: usize,
        mut build: impl FnMut(u64, usize) -> Result<Message<'a>>,
        mut parse: impl FnMut(&[u8], u64, usize) -> Result<T>,
    ) -> Result<Vec<T>> {
        let window = window.max(1);
        let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
        // (SP id on the wire, index, envelope id, deadline), oldest first.
        let mut in_flight: Vec<(u32, usize, u64, Instant)> = Vec::with_capacity(window);
        let mut refused: Option<(usize, Error)> = None;
        let mut next = 0;
        let max_recv = self.max_recv;
        loop {
            while refused.is_none() && next < count && in_flight.len() < window {
                let id = self.next_id();
                let msg = match build(id, next) {
                    Ok(m) => m,
                    Err(e) => {
                        if !in_flight.is_empty() {
                            self.pipe = None;
                        }
                        return Err(e);
                    }
                };
                let deadline = Instant::now() + self.timeout;
                let sp_id = self.next_sp_id;
                self.next_sp_id = self.next_sp_id.wrapping_add(1);
                match self.ensure_pipe(deadline).and_then(|p| p.send(sp_id, &msg, deadline)) {
                    Ok(wire_id) => in_flight.push((wire_id, next, id, deadline)),
                    Err(e) => {
                        self.pipe = None;
                        return Err(e);
                    }
                }
                next += 1;
            }
            let Some(deadline) = in_flight.iter().map(|r| r.3).min() else { break };
            let pipe = self.pipe.as_mut().expect("a request is in flight on it");
            let (rid, body) = match pipe.recv(deadline, max_recv) {
                Ok(r) => r,
                Err(e) => {
                    self.pipe = None;
                    return Err(e);
                }
            };
            // A reply to none of these is a late one to a request given up
            // on earlier: dropped, as NNG's REQ does.
            let Some(at) = in_flight.iter().position(|r| r.0 == rid) else { continue };
            let (_, index, id, _) = in_flight.remove(at);
            match parse(&body, id, index) {
                Ok(r) => results[index] = Some(r),
                Err(e @ Error::Server { .. }) => {
                    if refused.as_ref().is_none_or(|(i, _)| index < *i) {
                        refused = Some((index, e));
                    }
                }
                Err(e) => {
                    self.pipe = None;
                    return Err(e);
                }
            }
        }
        if let Some((_, e)) = refused {
            return Err(e);
        }
        Ok(results.into_iter().map(|r| r.expect("every request was answered")).collect())
    }

    /// A step sent in parts; see [`Client::step`].
    fn sliced_step(&mut self, s: &Session, grads: &[(&str, TensorRef<'_>)], o: &StepOptions) -> Result<StepResult> {
        let part_elements = o.part_elements.expect("a sliced step");
        if o.seq.is_none_or(|seq| seq == 0) {
            return Err(Error::invalid(
                "a sliced step (part_elements) needs seq, the step's sequence number in this client's numbering \
                 (StepOptions::seq): every part carries it, and a retry with the same seq completes a step that \
                 was cut short",
            ));
        }
        if o.clip_norm.is_some() {
            return Err(Error::invalid(
                "clip_norm cannot be used with a sliced step (part_elements): it needs every gradient at once; \
                 clip_value can",
            ));
        }
        if o.worker.is_some() {
            return Err(Error::invalid("a session with workers takes no sliced steps (part_elements)"));
        }
        let window = o.parts_in_flight.unwrap_or(2);
        if window == 0 {
            return Err(Error::invalid("parts_in_flight must be at least 1"));
        }
        let parts = slice_grads(grads, part_elements)?;
        let count = parts.len() as u32;
        let part_options = StepOptions { part_elements: None, parts_in_flight: None, ..o.clone() };

        // The parameters' new values, filled in from the parts' replies.
        let want = o.return_params != Some(false);
        let mut out: BTreeMap<&str, Assembly> = BTreeMap::new();
        if want {
            for (name, t) in grads {
                out.insert(
                    name,
                    Assembly { dtype: t.dtype(), shape: t.shape().to_vec(), numel: t.numel(), data: None, filled: 0 },
                );
            }
        }
        let replies = self.pipeline(
            parts.len(),
            window,
            |id, i| request::step_part(id, s, &parts[i], i as u32, count, &part_options),
            |bytes, id, _| {
                let mut r = reply::step_part(bytes, id)?;
                if let (true, Some(params)) = (want, r.params.take()) {
                    for (name, range) in params {
                        let a = out.get_mut(name.as_str()).ok_or_else(|| {
                            Error::protocol(format!("step part: the reply has {name:?}, which the step did not name"))
                        })?;
                        a.put(&name, range)?;
                    }
                }
                Ok(r)
            },
        )?;
        // The part that completed the step (a retry of a complete step has
        // only duplicates: then the last).
        let done: Vec<&StepPartResult> = replies.iter().filter(|r| r.complete).collect();
        let last = done.iter().rev().find(|r| !r.duplicate).or(done.last()).copied().ok_or_else(|| {
            Error::protocol(format!("sliced step: no part of {} reported the step complete", replies.len()))
        })?;
        let params = if want {
            let mut params = BTreeMap::new();
            for (name, a) in out {
                params.insert(name.to_owned(), a.finish(name)?);
            }
            Some(params)
        } else {
            None
        };
        Ok(StepResult {
            steps: last.steps,
            lr: last.lr,
            next_lr: last.next_lr,
            duplicate: replies.iter().all(|r| r.duplicate),
            lrs: last.lrs.clone(),
            next_lrs: last.next_lrs.clone(),
            grad_norm: None,
            params,
            worker: None,
            pushes: None,
            staleness: None,
            combined: None,
            lead: None,
            waited: None,
        })
    }

    /// `hello`: who the daemon is. `client` is free text for its log.
    pub fn hello(&mut self, client: Option<&str>) -> Result<Hello> {
        self.call(|id| request::hello(id, client), reply::hello)
    }

    /// `plugins`: every loaded optimizer and scheduler.
    pub fn plugins(&mut self) -> Result<Vec<PluginInfo>> {
        self.call(request::plugins, reply::plugins)
    }

    /// `sessions`: every session, by name.
    pub fn sessions(&mut self) -> Result<Vec<SessionSummary>> {
        self.call(request::sessions, reply::sessions)
    }

    /// `open`: a new session `name` run by optimizer plugin `optimizer`.
    /// Not re-sent on a transport error; with an `open_key` in `options`,
    /// calling it again with the same options is safe.
    pub fn open(&mut self, name: &str, optimizer: &str, options: &OpenOptions) -> Result<Opened> {
        self.call(|id| request::open(id, name, optimizer, options), reply::open)
    }

    /// `attach`: checks the token; the reply is `info`'s.
    pub fn attach(&mut self, s: &Session) -> Result<SessionInfo> {
        self.call(|id| request::attach(id, s), reply::info)
    }

    /// `info`; with `client`, the reply's `client_seq` is that client's
    /// highest applied `seq`.
    pub fn info(&mut self, s: &Session, client: Option<&str>) -> Result<SessionInfo> {
        self.call(|id| request::info(id, s, client), reply::info)
    }

    pub fn hparams(&mut self, s: &Session) -> Result<HparamsInfo> {
        self.call(|id| request::hparams(id, s), reply::hparams)
    }

    /// `set_hparams` on every group; each keeps the keys not given.
    pub fn set_hparams(&mut self, s: &Session, hparams: &Hparams) -> Result<HparamsInfo> {
        self.call(|id| request::set_hparams(id, s, hparams, None), reply::hparams)
    }

    /// `set_hparams` on one group.
    pub fn set_group_hparams(&mut self, s: &Session, group: &str, hparams: &Hparams) -> Result<HparamsInfo> {
        self.call(|id| request::set_hparams(id, s, hparams, Some(group)), reply::hparams)
    }

    /// `observe`: reports a metric (a validation loss, say) to the
    /// schedulers that take one (`plateau`): those of every group, or of
    /// `group` only. Returns the next lrs.
    pub fn observe(&mut self, s: &Session, metric: f64, group: Option<&str>) -> Result<Observed> {
        self.call(|id| request::observe(id, s, metric, group), reply::observe)
    }

    /// `close`: deletes the session and its files.
    pub fn close_session(&mut self, s: &Session) -> Result<()> {
        self.call(|id| request::close(id, s), reply::empty)
    }

    /// `register`: initial values of new parameters; returns how many.
    pub fn register(&mut self, s: &Session, params: &[(&str, TensorRef<'_>)]) -> Result<u64> {
        self.call(|id| request::register(id, s, params, None), reply::register)
    }

    /// `register` into parameter group `group` (declared at `open`).
    pub fn register_in_group(&mut self, s: &Session, group: &str, params: &[(&str, TensorRef<'_>)]) -> Result<u64> {
        self.call(|id| request::register(id, s, params, Some(group)), reply::register)
    }

    /// `step`: one optimizer update with these gradients. In a session with
    /// workers, a push by [`StepOptions::worker`]; a sync push returns when its
    /// round is applied (see [`Client::join`] on timeouts).
    ///
    /// **Sliced** ([`StepOptions::part_elements`]): the step goes as several
    /// messages (docs/protocol.md, `step`, "Sliced steps"), so that the
    /// daemon updates one part while the next is on the wire. The
    /// gradients, taken in order as if concatenated, are cut into parts of
    /// `part_elements` elements ([`wire::slice_grads`](crate::wire::slice_grads):
    /// small tensors whole, ranges of the ones a cut crosses, nothing
    /// copied), and up to [`StepOptions::parts_in_flight`] parts (default 2)
    /// are in flight at once on this connection, pipelined: the next part
    /// is written while the daemon works on the previous one, and the
    /// replies are matched to their parts by request id in whatever order
    /// they come. Keep it at most the daemon's `--max-in-flight` (16 by
    /// default), beyond which parts are refused with `LIMIT`. The result is
    /// that of the same step sent whole, bit for bit: counters and lrs from
    /// the part that completed the step, `params` assembled from every
    /// part's reply (`duplicate` when every part was one; no `grad_norm` or
    /// worker fields). A sliced step needs `seq` ([`StepOptions::seq`]);
    /// `clip_norm` and `worker` cannot be combined with it
    /// ([`Error::Invalid`], nothing sent), nor can a session with workers or
    /// Lookahead or an optimizer that is not element-wise
    /// ([`PluginInfo::sliced`]; `BAD_REQUEST` from the daemon).
    ///
    /// A part the daemon refuses makes the call return its error once the
    /// parts in flight have been answered (no later part is sent); the parts
    /// applied before it stay applied, and the session has a *pending* step
    /// ([`SessionInfo::pending_step`]) that refuses other steps and changes
    /// with [`ErrorCode::StepPending`](crate::ErrorCode::StepPending) until
    /// it is complete. **Retrying** after such an error, or after a
    /// transport error: send the same step again, with the same `seq`,
    /// `client`, gradients and `part_elements` (so that it is cut into the
    /// same parts). The parts the daemon had applied are answered as
    /// duplicates, with their elements' current values, and the others are
    /// applied, so the step completes exactly once. A client that cannot
    /// send the rest ends it with [`Client::abandon_step`].
    pub fn step(&mut self, s: &Session, grads: &[(&str, TensorRef<'_>)], options: &StepOptions) -> Result<StepResult> {
        if options.part_elements.is_some() {
            return self.sliced_step(s, grads, options);
        }
        self.call(|id| request::step(id, s, grads, options), reply::step)
    }

    /// One part of a sliced step: part `index` of `count` (1 to 65536) of
    /// the step `options.seq` (required) of `options.client`, with
    /// `options`' `return_params` and `clip_value`. Each gradient is a whole
    /// tensor or a range ([`PartGrad`]). The daemon checks that the parts
    /// fit together (no element twice; none missing when the last one
    /// arrives) and applies each part as it arrives; the step counts when
    /// its last part is in, whatever the order. [`Client::step`] with
    /// [`StepOptions::part_elements`] cuts and sends a whole step; this is
    /// the one message, for a caller that cuts its own.
    pub fn step_part(
        &mut self,
        s: &Session,
        grads: &[(&str, PartGrad<'_>)],
        index: u32,
        count: u32,
        options: &StepOptions,
    ) -> Result<StepPartResult> {
        self.call(|id| request::step_part(id, s, grads, index, count, options), reply::step_part)
    }

    /// `abandon_step`: ends the session's pending sliced step
    /// ([`SessionInfo::pending_step`], sent as `seq` by `client`; None:
    /// `""`) as it stands, for a client that cannot send its remaining
    /// parts: the elements its parts updated stay updated, the others are
    /// not, and it counts as a step (its other parts are duplicates from
    /// now on). A way to unblock a session, not to step. No pending step,
    /// or another `seq`/`client`: `BAD_REQUEST`.
    pub fn abandon_step(&mut self, s: &Session, seq: u64, client: Option<&str>) -> Result<Abandoned> {
        self.call(|id| request::abandon_step(id, s, seq, client), reply::abandon_step)
    }

    /// `pull`: current parameter values (all when `names` is None).
    pub fn pull(&mut self, s: &Session, names: Option<&[&str]>) -> Result<BTreeMap<String, Tensor>> {
        self.call(|id| request::pull(id, s, names), reply::pull)
    }

    /// `pull` as member `worker` of a session with workers: its staleness
    /// starts again from 0 (`UNKNOWN_WORKER` if it is not a member).
    pub fn pull_as_worker(&mut self, s: &Session, worker: &str, names: Option<&[&str]>) -> Result<BTreeMap<String, Tensor>> {
        self.call(|id| request::pull_as_worker(id, s, Some(worker), names), reply::pull)
    }

    /// `join`: makes `worker` (1 to 64 bytes) a member of a session opened
    /// with [`OpenOptions::workers`], at the lowest free rank; joining again
    /// changes nothing. A session without workers is `BAD_REQUEST`.
    ///
    /// **Timeouts.** Every push ([`StepOptions::worker`]) of a sync session
    /// waits for its round, and a bounded worker too far ahead waits for the
    /// slowest member, each up to the session's `timeout_ms` (60 s by
    /// default), while this client's calls give up after its own timeout
    /// (30 s unless set). Give a worker's client a longer one
    /// ([`Client::set_timeout`], [`Client::with_timeout`]): a call that gives
    /// up leaves its push counted on the daemon. The client never re-sends;
    /// retry a push with the same `seq` and `client` ([`StepOptions::seq`]):
    /// a retry of a push still waiting takes its place, one whose round was
    /// applied is answered as a `duplicate`.
    pub fn join(&mut self, s: &Session, worker: &str) -> Result<Joined> {
        self.call(|id| request::join(id, s, worker), reply::join)
    }

    /// `leave`: removes `worker` (`UNKNOWN_WORKER` if it is not a member); a
    /// push of it that waits is answered `UNKNOWN_WORKER`.
    pub fn leave(&mut self, s: &Session, worker: &str) -> Result<Left> {
        self.call(|id| request::leave(id, s, worker), reply::leave)
    }

    /// `state`: the optimizer state slots per parameter.
    pub fn state(&mut self, s: &Session, names: Option<&[&str]>) -> Result<StateMap> {
        self.call(|id| request::state(id, s, names), reply::state)
    }

    /// `export`: the session as one safetensors file.
    pub fn export(&mut self, s: &Session) -> Result<Vec<u8>> {
        self.call(|id| request::export(id, s), reply::export)
    }

    /// `import`: a session from an exported snapshot, with a new token.
    pub fn import(&mut self, snapshot: &[u8], options: &ImportOptions) -> Result<Imported> {
        self.call(|id| request::import(id, snapshot, options), reply::import)
    }

    /// `switch`: moves the session to optimizer plugin `optimizer` between
    /// two steps. The new optimizer keeps the session's values of the
    /// hyperparameters it shares, `hparams` over them; state slots of the
    /// same key and layout carry over (`carried`), the others start
    /// zero-filled. All or nothing.
    pub fn switch(&mut self, s: &Session, optimizer: &str, hparams: Option<&Hparams>) -> Result<Switched> {
        self.call(|id| request::switch(id, s, optimizer, hparams), reply::switch)
    }

    /// `reload` (admin: the daemon's `--admin-token`): rescans the plugin
    /// directories and hot-swaps every new or changed plugin file; one entry
    /// per file tried. A wrong token is [`ErrorCode::BadToken`](crate::ErrorCode::BadToken).
    pub fn reload(&mut self, admin_token: &str) -> Result<Vec<PluginLoad>> {
        self.call(|id| request::reload(id, admin_token), reply::reload)
    }

    /// `load` (admin): loads the plugin file at `path`, on the daemon's
    /// machine, as `reload` loads a changed one. A refused file is
    /// [`ErrorCode::Plugin`](crate::ErrorCode::Plugin).
    pub fn load(&mut self, path: &str, admin_token: &str) -> Result<Vec<PluginLoad>> {
        self.call(|id| request::load(id, path, admin_token), reply::reload)
    }

    /// `drop` (admin): closes the session named `session` as
    /// [`close_session`](Self::close_session) does, without its token (one
    /// whose token was lost). An unknown name is
    /// [`ErrorCode::UnknownSession`](crate::ErrorCode::UnknownSession).
    pub fn drop_session(&mut self, session: &str, admin_token: &str) -> Result<()> {
        self.call(|id| request::drop(id, session, admin_token), reply::empty)
    }

    /// `shutdown` (admin): stops the daemon as SIGTERM does; it answers,
    /// finishes the requests being applied, snapshots changed sessions and
    /// exits 0.
    pub fn shutdown(&mut self, admin_token: &str) -> Result<()> {
        self.call(|id| request::shutdown(id, admin_token), reply::empty)
    }
}

/// A parameter's new values, put together from the ranges of a sliced
/// step's replies.
struct Assembly {
    dtype: Dtype,
    shape: Vec<u64>,
    numel: usize,
    data: Option<Vec<u8>>,
    filled: usize,
}

impl Assembly {
    fn put(&mut self, name: &str, r: ParamRange) -> Result<()> {
        let n = r.values.numel();
        let fits = usize::try_from(r.offset).ok().filter(|&o| o <= self.numel && n <= self.numel - o);
        let offset = match fits {
            Some(o) if r.values.dtype() == self.dtype => o,
            _ => {
                return Err(Error::protocol(format!(
                    "step part: {name:?} came back as {n} {} elements at offset {}, for a {} tensor of {} elements",
                    r.values.dtype().as_str(),
                    r.offset,
                    self.dtype.as_str(),
                    self.numel
                )))
            }
        };
        self.filled += n;
        let size = self.dtype.size();
        match &mut self.data {
            // The whole tensor in one range: its bytes are the result.
            None if n == self.numel => self.data = Some(r.values.into_bytes()),
            data => {
                let buf = data.get_or_insert_with(|| vec![0; self.numel * size]);
                buf[offset * size..(offset + n) * size].copy_from_slice(r.values.bytes());
            }
        }
        Ok(())
    }

    fn finish(self, name: &str) -> Result<Tensor> {
        if self.filled != self.numel {
            return Err(Error::protocol(format!(
                "sliced step: the replies held {} of the {} elements of {name:?}",
                self.filled, self.numel
            )));
        }
        let data = self.data.unwrap_or_default();
        Tensor::from_bytes(self.dtype, self.shape, data).map_err(|e| Error::protocol(format!("{name:?}: {e}")))
    }
}

/// See [`Client::with_timeout`].
pub struct TimeoutGuard<'a> {
    client: &'a mut Client,
    saved: Duration,
}

impl Deref for TimeoutGuard<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
    }
}

impl DerefMut for TimeoutGuard<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
    }
}

impl Drop for TimeoutGuard<'_> {
    fn drop(&mut self) {
        self.client.timeout = self.saved;
    }
}
