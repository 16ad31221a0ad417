//! One call, from admission to hang-up.
//!
//! - [`registry`]: admission (a semaphore permit per call), lookup, hang-up and drain.
//! - [`core`]: every decision of a call, without I/O: text, flushes, clear and marks; LMNT
//!   audio routing, reconnect replay and the give-up rule; the playout; drain; figures.
//! - [`ledger`]: the core's book of text, nonces and audio per utterance.
//! - [`driver`]: the per-call task that feeds the core and carries out its outputs.

pub mod core;
pub mod driver;
pub mod ledger;
pub mod registry;

pub use self::core::{
    AttachError, BotOutput, CallCore, CallParams, CallSnapshot, CallState, EndReason,
};
pub use driver::{BotId, CallCommand, CallInfo, BOT_QUEUE_FRAMES};
pub use registry::{BridgeSettings, CallHandle, CallOptions, Calls, CreateError};
