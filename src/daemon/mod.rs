//! Process lifecycle: signals, drain, `sd_notify`.

pub mod notify;
pub mod signals;

use crate::config::{DemoArgs, ServeArgs};
use crate::exit::CommandError;

/// `lmnt-bridge serve`.
pub async fn serve(_args: ServeArgs) -> Result<(), CommandError> {
    Err(CommandError::Failed("serve: not built yet".into()))
}

/// `lmnt-bridge demo`.
pub async fn demo(_args: DemoArgs) -> Result<(), CommandError> {
    Err(CommandError::Failed("demo: not built yet".into()))
}
