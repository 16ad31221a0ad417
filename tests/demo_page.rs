//! `lmnt-bridge demo` as a person uses it: Debian's Chromium (a WebRTC stack that is neither
//! webrtc-rs nor aiortc) opens the call page, places a call, types what the bot says, and
//! hears it: the embedded local-tts speaks with espeak-ng, and the browser's own inbound-rtp
//! statistics must show received audio energy.

mod support;

use std::process::{Command, Stdio};

use serde_json::Value;
use support::daemon::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn chromium_places_a_call_from_the_demo_page_and_hears_the_bot() {
    let browser_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    assert!(
        std::path::Path::new(&format!("{browser_dir}/node_modules/playwright-core")).exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium or playwright-core is missing: run `make test` (scripts/install-deps.sh installs them)"
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let mut banner = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut banner,
    )
    .unwrap();
    let _demo = Demo(child);
    assert!(banner.contains(&format!("http://{listen}/")), "{banner}");

    let out = Command::new("node")
        .arg(format!("{browser_dir}/demo_call.js"))
        .arg(format!("http://{listen}/"))
        .arg("Hello, and thank you for calling. How can I help you today?")
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let log = stats["log"].as_str().unwrap();
    assert!(
        log.contains(r#""type":"utterance.started","utterance":1"#),
        "{log}"
    );
    assert!(
        log.contains(r#""type":"utterance.done","utterance":1"#),
        "{log}"
    );
    assert!(stats["packetsReceived"].as_u64().unwrap() > 100, "{stats}");
    // Speech at a normal level for a few seconds; silence alone stays below 0.001.
    assert!(
        stats["totalAudioEnergy"].as_f64().unwrap() > 0.05,
        "{stats}"
    );
}
