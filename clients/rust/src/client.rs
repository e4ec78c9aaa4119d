//! The blocking client: one connection, one request at a time.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sp::{parse_url, Address, Pipe, TlsConfig};
use crate::tensor::{Tensor, TensorRef};
use crate::types::*;
use crate::wire::{reply, request, Message};

/// The daemon's default address.
pub const DEFAULT_URL: &str = "tcp://127.0.0.1:7878";

/// A connection to one daemon. Calls are blocking and bounded by the
/// client's timeout (30 s unless set), which covers connecting, sending and
/// receiving. After a transport or protocol error the connection is dropped
/// and the next call dials again; the failed call itself is not re-sent
/// (an unsequenced `step` sent twice is applied twice).
///
/// For several requests in flight, use several clients.
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
    pub fn step(&mut self, s: &Session, grads: &[(&str, TensorRef<'_>)], options: &StepOptions) -> Result<StepResult> {
        self.call(|id| request::step(id, s, grads, options), reply::step)
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
