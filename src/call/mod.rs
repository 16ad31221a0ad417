//! One call, from admission to hang-up.
//!
//! - [`registry`]: admission (a semaphore permit per call), lookup, hang-up and drain.
//! - [`core`]: every decision of a call, without I/O: text, flushes, clear and marks; LMNT
//!   audio routing, reconnect replay and the give-up rule; the playout; drain; figures.
//! - [`ledger`]: the core's book of text, nonces and audio per utterance.
//! - [`driver`]: the per-call task that feeds the core and carries out its outputs.
//! - [`overload`]: the shared frame clock; refuses new calls while calls run late.
//! - [`shards`]: the call threads; each call runs whole on one of them.
//! - [`ticks`]: each call thread's 20 ms frame clock, one wake-up a frame for all its calls.
//! - [`in_flight`]: frames handed to the RTP sender until their datagrams have left, so the
//!   events they make true never reach the bot before the audio.

pub mod core;
pub mod driver;
pub mod in_flight;
pub mod ledger;
pub mod overload;
pub mod registry;
pub mod shards;
mod ticks;

pub use self::core::{
    AttachError, BotOutput, CallCore, CallParams, CallSnapshot, CallState, EndReason,
};
pub use driver::{BotId, CallCommand, CallInfo, BOT_QUEUE_FRAMES};
pub use registry::{AttachBotError, BridgeSettings, CallHandle, CallOptions, Calls, CreateError};
pub use shards::Shards;
