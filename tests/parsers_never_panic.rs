//! Every parser that reads input from outside (bot frames, LMNT frames, SDK init and command
//! frames, SDP offers, LMNT audio bytes) is fed seeded random and mutated input: it may
//! refuse, it must never panic. The seed is printed; set `PARSER_SEED` to replay one.

use lmnt_bridge::audio::{InputFormat, SampleDecoder};
use lmnt_bridge::local_tts::dialect::{parse_command, parse_init, Dialect};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Inputs per parser: enough to reach odd corners, quick in a debug build.
const CASES: usize = 3_000;

/// Valid frames of every kind, to mutate.
const SEEDS: &[&str] = &[
    r#"{"type":"text","text":"Hello there, "}"#,
    r#"{"type":"flush"}"#,
    r#"{"type":"mark","name":"m1"}"#,
    r#"{"type": "ready", "request_id": "req-1"}"#,
    r#"{"type":"flush_complete","nonce":3}"#,
    r#"{"type":"timestamps","timestamps":[{"text":"Hi","start":0.0,"duration":0.25}]}"#,
    r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"r"}"#,
    r#"{"X-API-Key": "k", "lmnt-version": "1.2", "voice": "leah", "format": "pcm_s16le", "sample_rate": 24000}"#,
    r#"{"X-API-Key":"k","voice":"tones","protocol_version":2,"sample_rate":"16000","return_extras":"True"}"#,
    r#"{"X-API-Key":"k","voice":"leah","send_extras":true,"speed":1.5}"#,
    r#"{"command":"flush","nonce":1}"#,
    r#"{"flush":true}"#,
    r#"{"eof":true}"#,
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=ice-ufrag:x\r\na=ice-pwd:yyyyyyyyyyyyyyyyyyyyyy\r\na=fingerprint:sha-256 00:11\r\n",
];

fn rng() -> StdRng {
    let seed = std::env::var("PARSER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("PARSER_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// A random mutation of a seed frame: byte flips, cuts, duplications, splices, or noise.
fn mutated(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes().to_vec();
    for _ in 0..rng.random_range(1..6) {
        let at = rng.random_range(0..=bytes.len());
        match rng.random_range(0..6) {
            0 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] = rng.random();
            }
            1 => bytes.truncate(at),
            2 => {
                let tail = bytes[at..].to_vec();
                bytes.extend_from_slice(&tail);
            }
            3 => {
                let other = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes();
                let from = rng.random_range(0..other.len());
                bytes.splice(at..at, other[from..].iter().copied());
            }
            4 => {
                let token = ["\\u0000", "\\ud83d", "1e999", "-0", "[", "{", "\"", "null"]
                    [rng.random_range(0..8)];
                bytes.splice(at..at, token.bytes());
            }
            _ => {
                let noise: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
                bytes.splice(at..at, noise);
            }
        }
    }
    bytes
}

fn each_input(mut check: impl FnMut(&str)) {
    let mut rng = rng();
    for _ in 0..CASES {
        let bytes = mutated(&mut rng);
        check(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn control_frames() {
    each_input(|s| {
        let _ = lmnt_bridge::control::parse(s);
    });
}

#[test]
fn lmnt_server_frames() {
    each_input(|s| {
        let _ = lmnt_bridge::lmnt::protocol::parse_server_frame(s);
    });
}

#[test]
fn local_tts_init_and_command_frames() {
    each_input(|s| {
        let _ = parse_init(s);
        for dialect in [Dialect::Typed, Dialect::Pv2, Dialect::Legacy] {
            let _ = parse_command(dialect, s);
        }
    });
}

#[test]
fn sdp_offers() {
    each_input(|s| {
        let _ = lmnt_bridge::rtc::check_offer(s);
    });
}

#[test]
fn lmnt_audio_bytes_in_any_chunking() {
    let mut rng = rng();
    for format in [
        InputFormat::PcmS16le,
        InputFormat::PcmF32le,
        InputFormat::Ulaw,
    ] {
        let mut decoder = SampleDecoder::new(format);
        let mut out = Vec::new();
        for _ in 0..CASES {
            let chunk: Vec<u8> = (0..rng.random_range(0..9)).map(|_| rng.random()).collect();
            decoder.push(&chunk, &mut out);
            assert!(out
                .iter()
                .all(|s| s.is_finite() && (-1.0..=1.0).contains(s)));
            out.clear();
        }
    }
}
