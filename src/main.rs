use std::process::ExitCode;

use std::time::Duration;

use clap::Parser;
use lmnt_bridge::cli::{Cli, Command};
use lmnt_bridge::exit::CommandError;

/// How long tasks left running after a command returns may delay the exit.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    lmnt_bridge::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return report(CommandError::Unavailable(format!("tokio runtime: {err}"))),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => lmnt_bridge::daemon::serve(args).await,
            Command::Demo(args) => lmnt_bridge::daemon::demo(args).await,
            Command::LocalTts(args) => lmnt_bridge::local_tts::run(args).await,
            Command::Speak(args) => lmnt_bridge::speak::run(args).await,
            Command::CheckConfig(args) => lmnt_bridge::config::check_config(args),
        }
    });
    // Tasks still running (peer connections closing, a local-tts synthesis) get a moment,
    // not a veto over the exit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

fn report(err: CommandError) -> ExitCode {
    eprintln!("lmnt-bridge: {err}");
    err.exit_code()
}
