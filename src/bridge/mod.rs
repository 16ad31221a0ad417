pub mod call;
pub mod ledger;
pub mod link;
pub mod registry;

pub use call::{BotOutput, CallCommand, CallInfo, EndReason};
pub use registry::{BridgeSettings, CallHandle, CallOptions, Calls, CreateError};
