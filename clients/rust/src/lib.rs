//! A client for optimd, the optimizer daemon: msgpack requests over the
//! Scalability Protocols' REQ/REP (docs/protocol.md in the optimd tree is the
//! contract).
//!
//! ```no_run
//! use optimd::{Client, OpenOptions, StepOptions, TensorRef};
//! # fn main() -> optimd::Result<()> {
//! let mut c = Client::connect("tcp://127.0.0.1:7878")?;
//! let opened = c.open("run1", "adamw", &OpenOptions::new().hparam("lr", 1e-3))?;
//! let w = vec![0.5f32; 4];
//! c.register(&opened.session, &[("w", TensorRef::f32(&[4], &w)?)])?;
//! let g = vec![0.1f32; 4];
//! let r = c.step(&opened.session, &[("w", TensorRef::f32(&[4], &g)?)], &StepOptions::new())?;
//! let w = r.params.unwrap()["w"].to_f32()?;
//! # let _ = w; Ok(())
//! # }
//! ```

mod client;
mod error;
mod sp;
mod tensor;
mod types;
pub mod wire;

pub use client::{Client, TimeoutGuard, DEFAULT_URL};
pub use error::{Error, ErrorCode, Result};
pub use sp::TlsConfig;
pub use tensor::{Dtype, Tensor, TensorRef};
pub use types::*;
