//! Starting `local-tts` for tests: in-process (`serve` on 127.0.0.1:0) or as a real process
//! (`lmnt-bridge local-tts --listen 127.0.0.1:0`, URL read from its first stdout line).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use lmnt_bridge::local_tts::{serve, LocalTtsConfig};
use tokio_util::sync::CancellationToken;

/// An in-process server; stopped (sessions closed) on drop.
pub struct InProcess {
    /// `http://127.0.0.1:PORT`, a base URL as LMNT's SDKs take it.
    pub base_url: String,
    /// `ws://127.0.0.1:PORT/v1/ai/speech/stream`.
    pub ws_url: String,
    shutdown: CancellationToken,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a server with `cfg` inside the current tokio runtime.
pub async fn start(cfg: LocalTtsConfig) -> InProcess {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, cfg, shutdown.clone()));
    InProcess {
        base_url: format!("http://{addr}"),
        ws_url: format!("ws://{addr}/v1/ai/speech/stream"),
        shutdown,
    }
}

/// A `local-tts` child process; killed on drop.
pub struct Process {
    pub child: Child,
    pub base_url: String,
    pub ws_url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `bin local-tts --listen 127.0.0.1:0 EXTRA...` with `envs`, stderr to `stderr`.
pub fn spawn(bin: &str, extra: &[&str], envs: &[(&str, &str)], stderr: Stdio) -> Process {
    spawn_on(bin, "127.0.0.1:0", extra, envs, stderr)
}

/// [`spawn`] on the address `listen` (a port chosen earlier, e.g. one the daemon was
/// already pointed at while nothing listened there).
pub fn spawn_on(
    bin: &str,
    listen: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
    stderr: Stdio,
) -> Process {
    let mut child = Command::new(bin)
        .args(["local-tts", "--listen", listen])
        .args(extra)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn lmnt-bridge local-tts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read local-tts stdout");
    let ws_url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("local-tts printed no URL: {line:?}"))
        .to_owned();
    let base_url = ws_url
        .trim_end_matches("/v1/ai/speech/stream")
        .replacen("ws://", "http://", 1);
    Process {
        child,
        base_url,
        ws_url,
    }
}
