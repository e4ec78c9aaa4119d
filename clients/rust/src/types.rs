//! Arguments and results of the protocol's ops, typed.

use std::collections::BTreeMap;

use crate::tensor::{Dtype, Tensor, TensorRef};

/// A hyperparameter value: what `open`, `set_hparams` take and `info`,
/// `hparams` return.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HValue {
    Bool(bool),
    Int(i64),
    Float(f64),
}

impl HValue {
    /// The value as a float, whichever number it is; None for a bool.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            HValue::Float(f) => Some(f),
            HValue::Int(i) => Some(i as f64),
            HValue::Bool(_) => None,
        }
    }
}

impl From<f64> for HValue {
    fn from(v: f64) -> HValue {
        HValue::Float(v)
    }
}
impl From<f32> for HValue {
    fn from(v: f32) -> HValue {
        HValue::Float(v as f64)
    }
}
impl From<i64> for HValue {
    fn from(v: i64) -> HValue {
        HValue::Int(v)
    }
}
impl From<i32> for HValue {
    fn from(v: i32) -> HValue {
        HValue::Int(v as i64)
    }
}
impl From<bool> for HValue {
    fn from(v: bool) -> HValue {
        HValue::Bool(v)
    }
}

/// A hyperparameter map, key → value.
pub type Hparams = BTreeMap<String, HValue>;

/// When a session's changes reach the disk (protocol.md, `open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Always,
    Interval,
    None,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::Interval => "interval",
            Durability::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Durability> {
        match s {
            "always" => Some(Durability::Always),
            "interval" => Some(Durability::Interval),
            "none" => Some(Durability::None),
            _ => None,
        }
    }
}

/// A session's name and the token `open` or `import` returned; every
/// session op needs both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    pub token: String,
}

impl Session {
    pub fn new(name: impl Into<String>, token: impl Into<String>) -> Session {
        Session { name: name.into(), token: token.into() }
    }
}

/// Optional keys of `open`. A `None` field is left out of the request, so
/// the daemon's default applies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpenOptions {
    /// The default group's hyperparameters.
    pub hparams: Option<Hparams>,
    /// The default group's scheduler.
    pub scheduler: Option<String>,
    pub sched_hparams: Option<Hparams>,
    pub durability: Option<Durability>,
    /// `open_key`: makes re-sending this open safe (see [`new_open_key`]).
    pub open_key: Option<String>,
    /// Parameter groups besides `"default"`, in declaration order.
    pub groups: Option<Vec<GroupSpec>>,
    /// `schedulers`: the parts of a combined schedule, with `scheduler`
    /// [`SEQUENTIAL`] or [`CHAINED`] (see [`OpenOptions::sequential`]).
    pub schedulers: Option<Vec<SchedulerSpec>>,
    /// `milestones`: sequential only, one fewer than `schedulers`.
    pub milestones: Option<Vec<u64>>,
    /// `lookahead`: wraps the optimizer in Lookahead.
    pub lookahead: Option<Lookahead>,
    /// `workers`: a session that several workers push to (see
    /// [`Client::join`](crate::Client::join)).
    pub workers: Option<Workers>,
}

impl OpenOptions {
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    pub fn hparam(mut self, key: &str, value: impl Into<HValue>) -> OpenOptions {
        self.hparams.get_or_insert_with(Hparams::new).insert(key.to_owned(), value.into());
        self
    }

    pub fn scheduler(mut self, id: &str) -> OpenOptions {
        self.scheduler = Some(id.to_owned());
        self
    }

    pub fn sched_hparam(mut self, key: &str, value: impl Into<HValue>) -> OpenOptions {
        self.sched_hparams.get_or_insert_with(Hparams::new).insert(key.to_owned(), value.into());
        self
    }

    pub fn durability(mut self, d: Durability) -> OpenOptions {
        self.durability = Some(d);
        self
    }

    /// `open_key`: 16 to 64 bytes of printable ASCII (0x21 to 0x7e), the same
    /// on every attempt of this open. An open re-sent with it after a lost
    /// reply answers with the session the first attempt created
    /// (`Opened::existing`) instead of `SESSION_EXISTS`.
    pub fn open_key(mut self, key: impl Into<String>) -> OpenOptions {
        self.open_key = Some(key.into());
        self
    }

    /// Adds a parameter group (torch's `param_groups[i]`).
    pub fn group(mut self, g: GroupSpec) -> OpenOptions {
        self.groups.get_or_insert_with(Vec::new).push(g);
        self
    }

    /// The default group runs `schedulers` one after another (torch's
    /// `SequentialLR`): scheduler *i* from epoch `milestones[i-1]`,
    /// restarted there at its epoch 0.
    pub fn sequential(mut self, schedulers: Vec<SchedulerSpec>, milestones: Vec<u64>) -> OpenOptions {
        self.scheduler = Some(SEQUENTIAL.to_owned());
        self.schedulers = Some(schedulers);
        self.milestones = Some(milestones);
        self
    }

    /// The default group steps every one of `schedulers` each epoch, each
    /// from the lr the one before it left (torch's `ChainedScheduler`).
    pub fn chained(mut self, schedulers: Vec<SchedulerSpec>) -> OpenOptions {
        self.scheduler = Some(CHAINED.to_owned());
        self.schedulers = Some(schedulers);
        self.milestones = None;
        self
    }

    /// Wraps the optimizer in Lookahead.
    pub fn lookahead(mut self, l: Lookahead) -> OpenOptions {
        self.lookahead = Some(l);
        self
    }

    /// Makes the session one that several workers push to.
    pub fn workers(mut self, w: Workers) -> OpenOptions {
        self.workers = Some(w);
        self
    }
}

/// How a session's workers push (`open`'s `workers.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkersMode {
    /// Bulk-synchronous: `count` pushes make a round, applied as one step
    /// with their gradients combined in rank order; each push waits for its
    /// round, up to `timeout_ms`.
    Sync,
    /// Every push is applied when it arrives.
    Async,
    /// As `Async`, but a worker more than `max_staleness` pushes ahead of
    /// the slowest member waits for it, up to `timeout_ms`.
    Bounded,
}

impl WorkersMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkersMode::Sync => "sync",
            WorkersMode::Async => "async",
            WorkersMode::Bounded => "bounded",
        }
    }

    pub fn parse(s: &str) -> Option<WorkersMode> {
        match s {
            "sync" => Some(WorkersMode::Sync),
            "async" => Some(WorkersMode::Async),
            "bounded" => Some(WorkersMode::Bounded),
            _ => None,
        }
    }
}

/// How a sync round combines its pushes' gradients (summed in rank order,
/// each addition rounded in the parameter's dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// The sum divided by the number of pushes: `((g0 + g1) + g2) / 3`.
    Mean,
    Sum,
}

impl Reduce {
    pub fn as_str(self) -> &'static str {
        match self {
            Reduce::Mean => "mean",
            Reduce::Sum => "sum",
        }
    }

    pub fn parse(s: &str) -> Option<Reduce> {
        match s {
            "mean" => Some(Reduce::Mean),
            "sum" => Some(Reduce::Sum),
            _ => None,
        }
    }
}

/// What a sync round incomplete after `timeout_ms` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    /// Every waiting push is answered `TIMEOUT`; nothing is applied.
    Fail,
    /// The round is applied with the pushes present.
    Proceed,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Fail => "fail",
            OnTimeout::Proceed => "proceed",
        }
    }

    pub fn parse(s: &str) -> Option<OnTimeout> {
        match s {
            "fail" => Some(OnTimeout::Fail),
            "proceed" => Some(OnTimeout::Proceed),
            _ => None,
        }
    }
}

/// `open`'s `workers`: how a session's workers push. A `None` field is
/// left out of the request (the daemon's default applies); a key that does
/// not belong to the mode is refused (`BAD_REQUEST`). In `info`, `join`
/// and `leave` replies every key of the mode is filled in.
///
/// ```
/// use optimd::{OnTimeout, OpenOptions, Workers};
/// let sync = Workers::sync(4).timeout_ms(30_000).on_timeout(OnTimeout::Proceed);
/// let bounded = Workers::bounded(2);
/// let opts = OpenOptions::new().hparam("lr", 1e-3).workers(sync);
/// # let _ = (opts, bounded, Workers::asynchronous());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workers {
    pub mode: WorkersMode,
    /// Sync (required): the pushes a round combines, and the most workers
    /// that can join.
    pub count: Option<u64>,
    /// Sync: default [`Reduce::Mean`].
    pub reduce: Option<Reduce>,
    /// Sync and bounded: 1 to 86,400,000 ms, default 60,000. A push may wait
    /// this long: see [`Client::join`](crate::Client::join) on timeouts.
    pub timeout_ms: Option<u64>,
    /// Sync: default [`OnTimeout::Fail`].
    pub on_timeout: Option<OnTimeout>,
    /// Bounded: default 0.
    pub max_staleness: Option<u64>,
}

impl Workers {
    /// Settings of `mode` with no key but the mode.
    pub fn new(mode: WorkersMode) -> Workers {
        Workers { mode, count: None, reduce: None, timeout_ms: None, on_timeout: None, max_staleness: None }
    }

    /// Sync rounds of `count` pushes.
    pub fn sync(count: u64) -> Workers {
        Workers { count: Some(count), ..Workers::new(WorkersMode::Sync) }
    }

    /// Async: every push applies at once.
    pub fn asynchronous() -> Workers {
        Workers::new(WorkersMode::Async)
    }

    /// Bounded staleness: at most `max_staleness` pushes ahead of the
    /// slowest member.
    pub fn bounded(max_staleness: u64) -> Workers {
        Workers { max_staleness: Some(max_staleness), ..Workers::new(WorkersMode::Bounded) }
    }

    pub fn reduce(mut self, r: Reduce) -> Workers {
        self.reduce = Some(r);
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Workers {
        self.timeout_ms = Some(ms);
        self
    }

    pub fn on_timeout(mut self, o: OnTimeout) -> Workers {
        self.on_timeout = Some(o);
        self
    }

    pub fn count(mut self, n: u64) -> Workers {
        self.count = Some(n);
        self
    }

    pub fn max_staleness(mut self, n: u64) -> Workers {
        self.max_staleness = Some(n);
        self
    }
}

/// One member of a session's workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub name: String,
    /// The order a sync round sums in, the lowest first.
    pub rank: u64,
    /// Its pushes applied so far (from 0 again after a restart).
    pub pushes: u64,
    /// The steps the session took since the parameters it last received.
    pub staleness: u64,
    /// A push of it waits (for its round, or for the slowest member).
    pub waiting: bool,
}

/// A session's workers as `info`, `join` and `leave` report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkersInfo {
    /// As `open` took them, every key of the mode filled in.
    pub settings: Workers,
    /// In rank order.
    pub members: Vec<WorkerInfo>,
    /// Sync: the pushes the round in progress has; None for other modes.
    pub round_pushes: Option<u64>,
}

impl WorkersInfo {
    pub fn member(&self, name: &str) -> Option<&WorkerInfo> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// Reply of `join`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The worker's rank: the lowest free one.
    pub rank: u64,
    /// The session's step count.
    pub steps: u64,
    pub workers: WorkersInfo,
}

/// Reply of `leave`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Left {
    pub steps: u64,
    pub workers: WorkersInfo,
}

/// The `scheduler` id of a sequential combined schedule.
pub const SEQUENTIAL: &str = "sequential";
/// The `scheduler` id of a chained combined schedule.
pub const CHAINED: &str = "chained";

/// One part of a combined schedule in `open`.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerSpec {
    /// A scheduler plugin id.
    pub scheduler: String,
    /// Over the plugin's defaults; None sends no `sched_hparams`.
    pub sched_hparams: Option<Hparams>,
}

impl SchedulerSpec {
    pub fn new(scheduler: impl Into<String>) -> SchedulerSpec {
        SchedulerSpec { scheduler: scheduler.into(), sched_hparams: None }
    }

    pub fn sched_hparam(mut self, key: &str, value: impl Into<HValue>) -> SchedulerSpec {
        self.sched_hparams.get_or_insert_with(Hparams::new).insert(key.to_owned(), value.into());
        self
    }
}

/// One part of a combined schedule as `info` reports it: every
/// hyperparameter, defaults included.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerInfo {
    pub scheduler: String,
    pub sched_hparams: Hparams,
}

/// Lookahead (Zhang et al. 2019) around the optimizer: after every `k`-th
/// step of a parameter, `slow += alpha * (param - slow)` and the parameter
/// becomes `slow`. `state` lists the slow weights as `lookahead_slow`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lookahead {
    /// ≥ 1.
    pub k: u64,
    /// In (0, 1].
    pub alpha: f64,
}

impl Lookahead {
    pub fn new(k: u64, alpha: f64) -> Lookahead {
        Lookahead { k, alpha }
    }
}

impl Default for Lookahead {
    /// The daemon's defaults: k 5, alpha 0.5.
    fn default() -> Lookahead {
        Lookahead { k: 5, alpha: 0.5 }
    }
}

/// A fresh random `open_key`: 32 lowercase hex digits from the OS's
/// random source. Keep it for the retries of one open; it is a secret like
/// the token (it can claim the session while the name is taken by it).
///
/// ```no_run
/// # use optimd::{Client, OpenOptions};
/// # fn main() -> optimd::Result<()> {
/// # let mut client = Client::connect("tcp://127.0.0.1:7878")?;
/// let opts = OpenOptions::new().hparam("lr", 1e-3).open_key(optimd::new_open_key());
/// let mut attempt = 0;
/// let opened = loop {
///     attempt += 1;
///     match client.open("run1", "adamw", &opts) {
///         Err(optimd::Error::Transport(e)) if attempt < 3 => eprintln!("{e}; retrying"),
///         other => break other?,
///     }
/// };
/// // opened.existing: true when an earlier attempt had created the session.
/// # let _ = opened; Ok(())
/// # }
/// ```
pub fn new_open_key() -> String {
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !filled {
        // std's hasher keys come from the OS's random source too, fresh
        // for every RandomState.
        use std::hash::{BuildHasher, Hasher};
        for half in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which scheduler a parameter group runs (`open`'s `groups[i].scheduler`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GroupScheduler {
    /// Key left out: the default group's scheduler, its `sched_hparams` the
    /// starting point.
    #[default]
    Inherit,
    /// nil: no scheduler; the group's lr changes only by `set_hparams`.
    Off,
    /// This scheduler plugin, its own defaults the starting point.
    Plugin(String),
}

/// One parameter group of `open` besides `"default"`.
///
/// ```no_run
/// # use optimd::{Client, GroupSpec, OpenOptions, TensorRef};
/// # fn main() -> optimd::Result<()> {
/// # let mut client = Client::connect("tcp://127.0.0.1:7878")?;
/// # let (wv, bv) = (vec![0.0f32; 4], vec![0.0f32; 2]);
/// # let (w, b) = (TensorRef::vec_f32(&wv), TensorRef::vec_f32(&bv));
/// let opts = OpenOptions::new()
///     .hparam("lr", 1e-3)
///     .scheduler("cosine").sched_hparam("T_max", 100)
///     .group(GroupSpec::new("no_decay").hparam("weight_decay", 0.0))      // default's scheduler
///     .group(GroupSpec::new("head").hparam("lr", 1e-2).no_scheduler())     // none
///     .group(GroupSpec::new("tail").scheduler("plateau").sched_hparam("patience", 2));
/// let s = client.open("run1", "adamw", &opts)?.session;
/// client.register(&s, &[("w", w)])?;                          // into "default"
/// client.register_in_group(&s, "no_decay", &[("bias", b)])?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    /// 1 to 64 bytes of `A-Z a-z 0-9 _ . -`, not `"default"`.
    pub name: String,
    /// Applied over the default group's hyperparameters: name only what
    /// differs.
    pub hparams: Option<Hparams>,
    pub scheduler: GroupScheduler,
    /// Applied over the scheduler's starting point.
    pub sched_hparams: Option<Hparams>,
    /// A combined schedule's parts, with `scheduler`
    /// `Plugin(`[`SEQUENTIAL`]`)` or `Plugin(`[`CHAINED`]`)`.
    pub schedulers: Option<Vec<SchedulerSpec>>,
    /// Sequential only.
    pub milestones: Option<Vec<u64>>,
}

impl GroupSpec {
    pub fn new(name: impl Into<String>) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            hparams: None,
            scheduler: GroupScheduler::Inherit,
            sched_hparams: None,
            schedulers: None,
            milestones: None,
        }
    }

    pub fn hparam(mut self, key: &str, value: impl Into<HValue>) -> GroupSpec {
        self.hparams.get_or_insert_with(Hparams::new).insert(key.to_owned(), value.into());
        self
    }

    pub fn scheduler(mut self, id: &str) -> GroupSpec {
        self.scheduler = GroupScheduler::Plugin(id.to_owned());
        self
    }

    /// This group runs without a scheduler even when the default group has
    /// one.
    pub fn no_scheduler(mut self) -> GroupSpec {
        self.scheduler = GroupScheduler::Off;
        self
    }

    pub fn sched_hparam(mut self, key: &str, value: impl Into<HValue>) -> GroupSpec {
        self.sched_hparams.get_or_insert_with(Hparams::new).insert(key.to_owned(), value.into());
        self
    }

    /// As [`OpenOptions::sequential`], for this group.
    pub fn sequential(mut self, schedulers: Vec<SchedulerSpec>, milestones: Vec<u64>) -> GroupSpec {
        self.scheduler = GroupScheduler::Plugin(SEQUENTIAL.to_owned());
        self.schedulers = Some(schedulers);
        self.milestones = Some(milestones);
        self
    }

    /// As [`OpenOptions::chained`], for this group.
    pub fn chained(mut self, schedulers: Vec<SchedulerSpec>) -> GroupSpec {
        self.scheduler = GroupScheduler::Plugin(CHAINED.to_owned());
        self.schedulers = Some(schedulers);
        self.milestones = None;
        self
    }
}

/// Optional keys of `step`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOptions {
    /// `return`: whether the reply carries the updated parameters (the
    /// daemon's default is true).
    pub return_params: Option<bool>,
    /// `seq`: 1 to 2^53 makes the step exactly-once for `client`.
    pub seq: Option<u64>,
    /// `client`: whose numbering `seq` belongs to (at most 64 bytes).
    pub client: Option<String>,
    /// `clip_value`: every gradient element clamped to ±this (> 0),
    /// torch's `clip_grad_value_`.
    pub clip_value: Option<f64>,
    /// `clip_norm`: torch's `clip_grad_norm_`; the reply then carries the
    /// norm before clipping ([`StepResult::grad_norm`]).
    pub clip_norm: Option<ClipNorm>,
    /// `worker`: the member pushing, in a session opened with workers
    /// (where every step is a push; see [`Client::join`](crate::Client::join)).
    pub worker: Option<String>,
    /// Not a key: send the step in parts of about this many elements (a
    /// sliced step, see [`Client::step`](crate::Client::step)); needs `seq`.
    pub part_elements: Option<u64>,
    /// Not a key: how many parts of a sliced step are in flight at once
    /// (default 2; at most the daemon's `--max-in-flight`, 16 by default).
    pub parts_in_flight: Option<usize>,
}

impl StepOptions {
    pub fn new() -> StepOptions {
        StepOptions::default()
    }

    pub fn return_params(mut self, yes: bool) -> StepOptions {
        self.return_params = Some(yes);
        self
    }

    pub fn seq(mut self, client: &str, seq: u64) -> StepOptions {
        self.client = Some(client.to_owned());
        self.seq = Some(seq);
        self
    }

    pub fn clip_value(mut self, v: f64) -> StepOptions {
        self.clip_value = Some(v);
        self
    }

    pub fn clip_norm(mut self, c: ClipNorm) -> StepOptions {
        self.clip_norm = Some(c);
        self
    }

    /// A push by member `name`.
    pub fn worker(mut self, name: &str) -> StepOptions {
        self.worker = Some(name.to_owned());
        self
    }

    /// A sliced step: the gradients cut into parts of `n` elements (≥ 1),
    /// sent with up to [`parts_in_flight`](Self::parts_in_flight) in flight
    /// ([`Client::step`](crate::Client::step)). Needs [`seq`](Self::seq).
    ///
    /// ```no_run
    /// # use optimd::{Client, StepOptions, TensorRef};
    /// # fn main() -> optimd::Result<()> {
    /// # let mut client = Client::connect("tcp://127.0.0.1:7878")?;
    /// # let s = optimd::Session::new("run1", "0".repeat(32));
    /// # let g = vec![0.1f32; 1 << 22];
    /// # let grads = [("w", TensorRef::vec_f32(&g))];
    /// let opts = StepOptions::new()
    ///     .seq("trainer", 42)        // required: every part carries it
    ///     .part_elements(1 << 20)    // about 1M elements a part
    ///     .parts_in_flight(2);       // the default
    /// let r = client.step(&s, &grads, &opts)?; // the same StepResult, bit for bit, as a whole step
    /// # Ok(())
    /// # }
    /// ```
    pub fn part_elements(mut self, n: u64) -> StepOptions {
        self.part_elements = Some(n);
        self
    }

    /// Parts of a sliced step in flight at once (≥ 1; default 2).
    pub fn parts_in_flight(mut self, n: usize) -> StepOptions {
        self.parts_in_flight = Some(n);
        self
    }
}

/// A gradient in one part of a sliced step ([`Client::step_part`](crate::Client::step_part);
/// docs/protocol.md, `step`, "Sliced steps").
#[derive(Clone, Debug)]
pub enum PartGrad<'a> {
    /// The parameter's whole gradient, as in a plain step.
    Whole(TensorRef<'a>),
    /// The gradient of the parameter's elements `offset ..` in C order:
    /// `values` is 1-D, of the parameter's dtype, with at least one element
    /// ([`TensorRef::flat_range`] cuts one from a whole gradient).
    Range { offset: u64, values: TensorRef<'a> },
}

impl<'a> PartGrad<'a> {
    pub fn range(offset: u64, values: TensorRef<'a>) -> PartGrad<'a> {
        PartGrad::Range { offset, values }
    }

    /// The first element it covers and how many.
    pub fn span(&self) -> (u64, u64) {
        match self {
            PartGrad::Whole(t) => (0, t.numel() as u64),
            PartGrad::Range { offset, values } => (*offset, values.numel() as u64),
        }
    }
}

impl<'a> From<TensorRef<'a>> for PartGrad<'a> {
    fn from(t: TensorRef<'a>) -> PartGrad<'a> {
        PartGrad::Whole(t)
    }
}

/// `step`'s `clip_norm`: gradients scaled so that their total norm is at
/// most `max_norm`. `None` fields are left to the daemon (2-norm, over the
/// whole step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipNorm {
    /// > 0.
    pub max_norm: f64,
    /// `norm_type`: p of the p-norm (> 0), `f64::INFINITY` for the max norm.
    pub norm_type: Option<f64>,
    /// `per_group`: each group's gradients clipped on their own; the reply
    /// has one norm per group.
    pub per_group: Option<bool>,
}

impl ClipNorm {
    pub fn new(max_norm: f64) -> ClipNorm {
        ClipNorm { max_norm, norm_type: None, per_group: None }
    }

    pub fn norm_type(mut self, p: f64) -> ClipNorm {
        self.norm_type = Some(p);
        self
    }

    pub fn per_group(mut self, yes: bool) -> ClipNorm {
        self.per_group = Some(yes);
        self
    }
}

/// Optional keys of `import`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    pub session: Option<String>,
    pub durability: Option<Durability>,
}

/// Reply of `hello`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hello {
    pub server: String,
    pub version: String,
    pub protocol: u64,
    pub abi: (u64, u64),
    pub max_message: u64,
}

/// One hyperparameter declaration of a plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct HparamDecl {
    pub key: String,
    /// `type`: "float", "int" or "bool".
    pub kind: String,
    pub required: bool,
    pub mutable: bool,
    pub min: f64,
    pub max: f64,
    pub min_exclusive: bool,
    pub max_exclusive: bool,
    /// None when the key is required (the wire's nil).
    pub default: Option<HValue>,
    pub doc: String,
}

/// One per-parameter state slot of an optimizer.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotDecl {
    pub key: String,
    /// "param", "f32" or "f64".
    pub dtype: String,
    /// "param", "scalar", "rows" or "cols"; kept as sent, since the
    /// protocol may add shapes ([`SlotDecl::shape_kind`]).
    pub shape: String,
    pub enabled_by: Option<String>,
    pub doc: String,
}

/// A slot's `shape`, for matching. Shapes this client does not know are
/// not an error: they come back as `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotShape<'a> {
    /// The parameter's shape.
    Param,
    /// One element, shape `[]`.
    Scalar,
    /// Factored statistics: `[..., r]` of a `[..., r, c]` parameter (the
    /// parameter's shape below 2 dimensions).
    Rows,
    /// `[..., c]` of a `[..., r, c]` parameter (`[]` below 2 dimensions).
    Cols,
    Other(&'a str),
}

impl SlotDecl {
    pub fn shape_kind(&self) -> SlotShape<'_> {
        match self.shape.as_str() {
            "param" => SlotShape::Param,
            "scalar" => SlotShape::Scalar,
            "rows" => SlotShape::Rows,
            "cols" => SlotShape::Cols,
            other => SlotShape::Other(other),
        }
    }
}

/// One loaded plugin, from `plugins`.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginInfo {
    pub id: String,
    /// "optimizer" or "scheduler".
    pub kind: String,
    pub version: String,
    pub description: String,
    pub hparams: Vec<HparamDecl>,
    /// Optimizers only.
    pub slots: Option<Vec<SlotDecl>>,
    /// Optimizers only.
    pub dtypes: Option<Vec<String>>,
    /// Optimizers only: its steps may be sent in parts (sliced steps,
    /// docs/protocol.md). None where the daemon does not say.
    pub sliced: Option<bool>,
}

/// Reply of `open`.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    pub session: Session,
    /// The lr the first step will use (for an `existing` session, the lr
    /// its next step will use).
    pub lr: f64,
    /// True when the daemon answered a re-sent open (same `open_key`) with
    /// the session an earlier attempt created.
    pub existing: bool,
}

/// A registered parameter, from `info`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    /// The parameter group it belongs to.
    pub group: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub steps: u64,
}

/// One parameter group as `info`, `hparams` and `set_hparams` report it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInfo {
    pub name: String,
    pub scheduler: Option<String>,
    /// A combined schedule's parts (`scheduler` [`SEQUENTIAL`] or
    /// [`CHAINED`]); None otherwise.
    pub schedulers: Option<Vec<SchedulerInfo>>,
    /// Sequential only.
    pub milestones: Option<Vec<u64>>,
    pub hparams: Hparams,
    pub sched_hparams: Hparams,
    pub base_lr: f64,
    /// The lr the group's next step will use.
    pub lr: f64,
    /// How many parameters are in it.
    pub params: u64,
}

fn find_group<'a>(groups: &'a [GroupInfo], name: &str) -> Option<&'a GroupInfo> {
    groups.iter().find(|g| g.name == name)
}

/// Reply of `info` and `attach`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionInfo {
    /// Present when the request named a `client`.
    pub client_seq: Option<u64>,
    pub session: String,
    pub durability: Durability,
    pub optimizer: String,
    pub optimizer_version: String,
    /// None when Lookahead is off.
    pub lookahead: Option<Lookahead>,
    pub scheduler: Option<String>,
    /// The default group's combined schedule, as in [`GroupInfo`].
    pub schedulers: Option<Vec<SchedulerInfo>>,
    pub milestones: Option<Vec<u64>>,
    pub hparams: Hparams,
    pub sched_hparams: Hparams,
    pub base_lr: f64,
    pub lr: f64,
    pub steps: u64,
    pub params: Vec<ParamInfo>,
    /// Every group, `"default"` first. The top-level `scheduler`,
    /// `hparams`, `sched_hparams`, `base_lr` and `lr` are the default
    /// group's.
    pub groups: Vec<GroupInfo>,
    /// The settings, members and round of a session opened with workers;
    /// None otherwise.
    pub workers: Option<WorkersInfo>,
    /// The sliced step in progress (some of its parts applied, not all);
    /// None when there is none.
    pub pending_step: Option<PendingStep>,
}

/// A sliced step that has not received all its parts (`info`'s
/// `pending_step`). Until its last part is in, the session refuses other
/// steps and changes with [`ErrorCode::StepPending`](crate::ErrorCode::StepPending);
/// sending the step again with the same `seq` completes it, and
/// [`Client::abandon_step`](crate::Client::abandon_step) ends it as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingStep {
    /// The `client` and `seq` it was sent under.
    pub client: String,
    pub seq: u64,
    /// Its number of parts, and how many of them were applied.
    pub count: u64,
    pub applied: u64,
}

impl SessionInfo {
    pub fn group(&self, name: &str) -> Option<&GroupInfo> {
        find_group(&self.groups, name)
    }
}

/// Reply of `hparams` and `set_hparams`.
#[derive(Clone, Debug, PartialEq)]
pub struct HparamsInfo {
    /// The default group's, as the next four.
    pub hparams: Hparams,
    pub sched_hparams: Hparams,
    pub base_lr: f64,
    pub lr: f64,
    /// Every group, `"default"` first.
    pub groups: Vec<GroupInfo>,
}

impl HparamsInfo {
    pub fn group(&self, name: &str) -> Option<&GroupInfo> {
        find_group(&self.groups, name)
    }
}

/// One session, from `sessions`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionSummary {
    pub session: String,
    pub optimizer: String,
    pub scheduler: Option<String>,
    pub params: u64,
    pub steps: u64,
}

/// Group name → lr.
pub type GroupLrs = BTreeMap<String, f64>;

/// The gradient norm before clipping, when the step asked for `clip_norm`.
#[derive(Clone, Debug, PartialEq)]
pub enum GradNorm {
    /// `grad_norm`: over all of the step's gradients.
    Total(f64),
    /// `grad_norms` (`per_group`): group name → norm, for each group that
    /// had gradients in the step.
    PerGroup(BTreeMap<String, f64>),
}

/// Reply of `step`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    pub steps: u64,
    /// The lr this step used (default group).
    pub lr: f64,
    /// The lr the next step will use (default group).
    pub next_lr: f64,
    pub duplicate: bool,
    /// Per group, with more than one group and not on a duplicate.
    pub lrs: Option<GroupLrs>,
    pub next_lrs: Option<GroupLrs>,
    /// With `clip_norm`, not on a duplicate.
    pub grad_norm: Option<GradNorm>,
    /// Absent when the request said `return: false`.
    pub params: Option<BTreeMap<String, Tensor>>,
    /// A worker's push (sessions with workers): who pushed, its pushes
    /// applied so far (this one included), and the steps the session took
    /// since the parameters it last received (not counting this one).
    pub worker: Option<String>,
    pub pushes: Option<u64>,
    pub staleness: Option<u64>,
    /// Sync: the pushes the round combined.
    pub combined: Option<u64>,
    /// Bounded: how many pushes it was ahead of the slowest member when
    /// admitted, and whether it had to wait.
    pub lead: Option<u64>,
    pub waited: Option<bool>,
}

impl StepResult {
    /// The lr this step used for `group`: from `lrs`, or `lr` for
    /// `"default"` when the reply has no per-group map.
    pub fn lr_of(&self, group: &str) -> Option<f64> {
        group_lr(&self.lrs, self.lr, group)
    }

    /// The lr `group`'s next step will use, likewise.
    pub fn next_lr_of(&self, group: &str) -> Option<f64> {
        group_lr(&self.next_lrs, self.next_lr, group)
    }
}

/// New values of a parameter's elements `offset ..` (C order): what a part
/// of a sliced step returns for each parameter it named. `values` is 1-D.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamRange {
    pub offset: u64,
    pub values: Tensor,
}

/// Reply to one part of a sliced step ([`Client::step_part`](crate::Client::step_part)).
#[derive(Clone, Debug, PartialEq)]
pub struct StepPartResult {
    /// The session's steps: the step counts only once it is complete.
    pub steps: u64,
    pub lr: f64,
    /// Equals `lr` while the step is not complete.
    pub next_lr: f64,
    /// This part had been applied before (its values are the current ones).
    pub duplicate: bool,
    /// This part completed the step, or the step was complete before it.
    pub complete: bool,
    /// The step's parts applied so far.
    pub parts: u64,
    /// Per group, with more than one group, as in [`StepResult`].
    pub lrs: Option<GroupLrs>,
    pub next_lrs: Option<GroupLrs>,
    /// Each parameter the part named: the new values of the elements it
    /// carried. None when the request said `return: false`.
    pub params: Option<BTreeMap<String, ParamRange>>,
}

/// Reply of `abandon_step`: the session's counters after the step it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Abandoned {
    pub steps: u64,
    pub lr: f64,
    pub next_lr: f64,
    pub lrs: Option<GroupLrs>,
    pub next_lrs: Option<GroupLrs>,
    /// The parts that had been applied.
    pub parts: u64,
}

fn group_lr(map: &Option<GroupLrs>, default: f64, group: &str) -> Option<f64> {
    match map {
        Some(m) => m.get(group).copied(),
        None if group == "default" => Some(default),
        None => None,
    }
}

/// Reply of `observe`.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The next lr of the group named in the request, or of the default
    /// group.
    pub lr: f64,
    /// Every group's next lr.
    pub lrs: GroupLrs,
}

/// Reply of `import`.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    pub session: Session,
    pub steps: u64,
}

/// Reply of `state`: parameter → slot key → tensor.
pub type StateMap = BTreeMap<String, BTreeMap<String, Tensor>>;

/// Reply of `switch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switched {
    /// The optimizer the session now runs, and its version.
    pub optimizer: String,
    pub optimizer_version: String,
    /// The state slot keys carried over (same key and layout); the new
    /// optimizer's other slots start zero-filled.
    pub carried: Vec<String>,
}

/// One plugin file that `reload` or `load` tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginLoad {
    /// The file, on the daemon's machine.
    pub path: String,
    pub outcome: LoadOutcome,
}

/// What became of a plugin file: loaded as the current version of plugin
/// `id`, or refused (the running version stays).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded { id: String, version: String },
    Refused { error: String },
}

impl PluginLoad {
    /// The reply's `loaded`.
    pub fn loaded(&self) -> bool {
        matches!(self.outcome, LoadOutcome::Loaded { .. })
    }
}
