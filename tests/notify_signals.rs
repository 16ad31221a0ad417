//! Shutdown signals with real SIGTERM/SIGINT sent to a child process: the test binary re-runs
//! itself in child mode (`LMNT_BRIDGE_SIGNALS_CHILD=1`), where `signals_child` installs the
//! handlers and reports each phase on stdout.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lmnt_bridge::daemon::signals::{install, ShutdownSignals};

const CHILD_ENV: &str = "LMNT_BRIDGE_SIGNALS_CHILD";
/// Guard against a hang; each phase normally takes milliseconds.
const GUARD: Duration = Duration::from_secs(20);

/// Child mode only (a no-op in a normal run): installs the handlers and prints `installed`,
/// `drain` and `abort` as the tokens fire.
#[test]
fn signals_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let signals = install().unwrap();
        println!("phase:installed");
        signals.drain.cancelled().await;
        assert!(!signals.abort.is_cancelled());
        println!("phase:drain");
        signals.abort.cancelled().await;
        println!("phase:abort");
    });
}

/// Kills the child when a test fails before the child exits on its own.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child() -> (Reaped, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "signals_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest may print `test signals_child ... ` on the same line first.
            if let Some((_, phase)) = line.split_once("phase:") {
                if tx.send(phase.trim().to_string()).is_err() {
                    break;
                }
            }
        }
    });
    (Reaped(child), rx)
}

fn kill(child: &Reaped, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn expect(rx: &mpsc::Receiver<String>, phase: &str) {
    assert_eq!(rx.recv_timeout(GUARD).as_deref(), Ok(phase));
}

#[test]
fn first_sigterm_drains_second_signal_aborts() {
    let (mut child, rx) = spawn_child();
    expect(&rx, "installed");
    kill(&child, "-TERM");
    expect(&rx, "drain");
    kill(&child, "-INT");
    expect(&rx, "abort");
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn sigint_first_also_drains() {
    let (mut child, rx) = spawn_child();
    expect(&rx, "installed");
    kill(&child, "-INT");
    expect(&rx, "drain");
    kill(&child, "-TERM");
    expect(&rx, "abort");
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn tokens_can_be_cancelled_directly() {
    let signals = ShutdownSignals::default();
    let drain = signals.drain.clone();
    drain.cancel();
    assert!(signals.drain.is_cancelled() && !signals.abort.is_cancelled());
}

#[test]
fn install_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(install().is_err());
}
