//! Arguments and results of the protocol's ops, typed.

use std::collections::BTreeMap;

use crate::tensor::{Dtype, Tensor};

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
    pub hparams: Option<Hparams>,
    pub scheduler: Option<String>,
    pub sched_hparams: Option<Hparams>,
    pub durability: Option<Durability>,
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
}

/// Optional keys of `step`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOptions {
    /// `return`: whether the reply carries the updated parameters (the
    /// daemon's default is true).
    pub return_params: Option<bool>,
    /// `seq`: 1 to 2^53 makes the step exactly-once for `client`.
    pub seq: Option<u64>,
    /// `client`: whose numbering `seq` belongs to (at most 64 bytes).
    pub client: Option<String>,
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
    /// "param" or "scalar".
    pub shape: String,
    pub enabled_by: Option<String>,
    pub doc: String,
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
}

/// Reply of `open`.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    pub session: Session,
    /// The lr the first step will use.
    pub lr: f64,
}

/// A registered parameter, from `info`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub steps: u64,
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
    pub scheduler: Option<String>,
    pub hparams: Hparams,
    pub sched_hparams: Hparams,
    pub base_lr: f64,
    pub lr: f64,
    pub steps: u64,
    pub params: Vec<ParamInfo>,
}

/// Reply of `hparams` and `set_hparams`.
#[derive(Clone, Debug, PartialEq)]
pub struct HparamsInfo {
    pub hparams: Hparams,
    pub sched_hparams: Hparams,
    pub base_lr: f64,
    pub lr: f64,
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

/// Reply of `step`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    pub steps: u64,
    pub lr: f64,
    pub next_lr: f64,
    pub duplicate: bool,
    /// Absent when the request said `return: false`.
    pub params: Option<BTreeMap<String, Tensor>>,
}

/// Reply of `import`.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    pub session: Session,
    pub steps: u64,
}

/// Reply of `state`: parameter → slot key → tensor.
pub type StateMap = BTreeMap<String, BTreeMap<String, Tensor>>;
