//! End-to-end figures of one call, measured at an independent caller (Python aiortc, which
//! is also the bot, so every figure is on one monotonic clock): flush -> first audio
//! latency, packet inter-arrival deviation, `utterance.done` lag, received vs sent audio.
//!
//! Runs the release binary as two real processes (`local-tts` with zero first-byte delay,
//! `serve`) on loopback. `cargo bench --bench call_latency`; needs `.venv` (`make deps`).

#[path = "../tests/support/daemon.rs"]
#[allow(dead_code)] // the bench uses the daemon helper without its drain controls
mod daemon;

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const UTTERANCES: &str = "50";
const CONFIG: &str = "[lmnt]\nvoice = \"tones\"\n";

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours means another bench was asked for.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"call_latency".contains(&a))
    {
        return;
    }
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    assert!(
        std::path::Path::new(python).exists(),
        "{python} missing: run `make deps`"
    );
    let tts_port = daemon::free_port();
    let mut tts = Command::new(BIN)
        .args(["local-tts", "--listen", &format!("127.0.0.1:{tts_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("local-tts");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let daemon = daemon::Daemon::start(
        &format!("http://127.0.0.1:{tts_port}"),
        CONFIG,
        &[("RUST_LOG", "warn")],
    );
    let cpu_before = daemon.cpu_time();
    let started = std::time::Instant::now();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/measure_call.py"
        ))
        .args([
            "--url",
            &format!("{}/v1/calls", daemon.base()),
            "--utterances",
            UTTERANCES,
        ])
        .output()
        .expect("run measure_call.py");
    let wall = started.elapsed();
    let cpu = daemon.cpu_time().saturating_sub(cpu_before);
    let _ = tts.kill();
    let _ = tts.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "measure_call.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).expect("figures JSON");
    let ms = |key: &str, q: &str| figures[key][q].as_f64().unwrap_or(f64::NAN);
    println!(
        "call_latency: {} utterances of the tones voice, aiortc caller, loopback",
        figures["utterances"]
    );
    for (key, label) in [
        ("flush_to_first_audio_ms", "flush -> first decoded audio"),
        (
            "flush_to_first_packet_ms",
            "flush -> first audio RTP packet",
        ),
        (
            "done_after_last_frame_ms",
            "utterance.done after the utterance's last frame",
        ),
        ("interarrival_dev_ms", "packet inter-arrival |gap - 20 ms|"),
    ] {
        println!(
            "  {label:<48} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
            ms(key, "p50"),
            ms(key, "p99"),
            ms(key, "max")
        );
    }
    println!(
        "  daemon CPU during the call: {:.2} % of one core ({:.2} s CPU over {:.1} s; includes call setup)",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "  daemon's own view (mean): flush -> first LMNT byte {:.2} ms, flush -> first frame sent {:.2} ms",
        figures["daemon_flush_to_first_audio_ms"].as_f64().unwrap_or(f64::NAN),
        figures["daemon_flush_to_first_frame_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  received audio {} ms vs sent {} ms; underrun frames {}, late frames {}",
        figures["received_audio_ms"],
        figures["sent_audio_ms"],
        figures["underrun_frames"],
        figures["late_frames"]
    );
}
