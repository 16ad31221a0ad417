//! `lmnt-bridge speak` end to end against a spawned `local-tts` process, read back with the
//! `tones` decoder; the API key never reaches a log line, even at trace level; and the
//! decoder itself on audio like a live call's (offset, gaps, 48 kHz, Opus).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use lmnt_bridge::local_tts::voice::{render_tones, resample_linear};
use support::{local_tts, tones};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const KEY: &str = "sk-test-9f8e7d6c5b4a";

fn read_wav(path: &std::path::Path) -> (u32, Vec<i16>) {
    let mut r = hound::WavReader::open(path).expect("speak wrote a WAV");
    let spec = r.spec();
    assert_eq!((spec.channels, spec.bits_per_sample), (1, 16));
    (
        spec.sample_rate,
        r.samples::<i16>().map(Result::unwrap).collect(),
    )
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn speak_writes_a_wav_that_decodes_to_the_text_and_never_logs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server_log = dir.path().join("local-tts.log");
    let srv = local_tts::spawn(
        BIN,
        &["--require-key", KEY, "--odd-chunks"],
        &[("RUST_LOG", "trace")],
        Stdio::from(std::fs::File::create(&server_log).unwrap()),
    );
    let out = dir.path().join("out.wav");
    let text = "Hello from speak, 2026! zyx";
    let res = Command::new(BIN)
        .args(["speak", "--voice", "tones", "--sample-rate", "16000", "-o"])
        .arg(&out)
        .arg(text)
        .env("LMNT_API_KEY", KEY)
        .env("LMNT_BASE_URL", &srv.base_url)
        .env(
            "RUST_LOG",
            "trace,tungstenite=trace,tokio_tungstenite=trace",
        )
        .output()
        .unwrap();
    let client_log = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(res.status.success(), "speak failed: {client_log}");
    let (rate, pcm) = read_wav(&out);
    assert_eq!(rate, 16000);
    assert_eq!(pcm.len(), text.chars().count() * 60 * 16);
    assert_eq!(tones::decode_i16(&pcm, rate), tones::expected(text));
    drop(srv);
    let server_log = std::fs::read_to_string(&server_log).unwrap();
    // The logs are real trace output (so the check means something) and hold no key.
    assert!(client_log.contains("TRACE"), "client logged at trace");
    assert!(
        server_log.contains("session started"),
        "server log captured"
    );
    for (who, log) in [("speak", &client_log), ("local-tts", &server_log)] {
        assert!(!log.contains(KEY), "{who} logged the API key");
        assert!(!log.contains(&hex(KEY)), "{who} logged the API key in hex");
    }
}

#[test]
fn speak_streams_stdin_line_by_line() {
    let srv = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdin.wav");
    let mut child = Command::new(BIN)
        .args(["speak", "--voice", "tones", "--sample-rate", "8000", "-o"])
        .arg(&out)
        .env("LMNT_BASE_URL", &srv.base_url)
        .env_remove("LMNT_API_KEY")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first line. \nsecond 2\n").unwrap();
    drop(stdin);
    let res = child.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let (rate, pcm) = read_wav(&out);
    assert_eq!(
        tones::decode_i16(&pcm, rate),
        tones::expected("first line. \nsecond 2\n")
    );
}

#[test]
fn speak_without_key_or_base_url_is_a_config_error() {
    let res = Command::new(BIN)
        .args(["speak", "hi"])
        .env_remove("LMNT_API_KEY")
        .env_remove("LMNT_BASE_URL")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(
        res.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(String::from_utf8_lossy(&res.stderr).contains("LMNT_API_KEY"));
}

/// Two utterances with an irregular gap, after an unknown offset, at 48 kHz through Opus
/// (20 ms frames, 32 kbps, VoIP), as a WebRTC caller would record them.
#[test]
fn decoder_reads_a_call_recording_through_opus() {
    use audiopus::coder::{Decoder, Encoder};
    use audiopus::{Application, Channels, SampleRate};
    let mut signal = vec![0.0f32; 24_000 * 37 / 1000];
    signal.extend(render_tones("Call 1 ok", 24_000));
    signal.extend(vec![0.0f32; 24_000 * 733 / 1000]);
    signal.extend(render_tones("then  more 9", 24_000));
    signal.extend(vec![0.0f32; 24_000 / 10]);
    let at48 = resample_linear(&signal, 24_000, 48_000);
    let mut enc = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).unwrap();
    enc.set_bitrate(audiopus::Bitrate::BitsPerSecond(32_000))
        .unwrap();
    let mut dec = Decoder::new(SampleRate::Hz48000, Channels::Mono).unwrap();
    let mut decoded = Vec::new();
    let mut packet = [0u8; 1500];
    let mut frame_out = vec![0f32; 960];
    for frame in at48.chunks_exact(960) {
        let n = enc.encode_float(frame, &mut packet).unwrap();
        let p = audiopus::packet::Packet::try_from(&packet[..n]).unwrap();
        let m = dec
            .decode_float(
                Some(p),
                audiopus::MutSignals::try_from(&mut frame_out[..]).unwrap(),
                false,
            )
            .unwrap();
        decoded.extend_from_slice(&frame_out[..m]);
    }
    let got = tones::decode(&decoded, 48_000);
    assert_eq!(
        tones::collapse_spaces(&got),
        tones::collapse_spaces(&format!(
            "{} {}",
            tones::expected("Call 1 ok"),
            tones::expected("then  more 9")
        ))
    );
    // Within one utterance, silent slots are counted exactly.
    assert!(got.contains("then  more 9"), "{got:?}");
    // Clean audio at every session rate decodes exactly, offset or not.
    for rate in [8000, 16000, 24000] {
        let mut s = vec![0.0f32; rate as usize / 93];
        s.extend(render_tones("the quick brown fox 0123456789", rate));
        assert_eq!(tones::decode(&s, rate), "the quick brown fox 0123456789");
    }
}
