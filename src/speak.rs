//! `lmnt-bridge speak`: text into one LMNT session, audio into a WAV file.
//!
//! Streams TEXT (or stdin, line by line as it arrives, like an LLM stream) into one session,
//! then flushes and finishes, while a second task reads audio concurrently. The session asks
//! for `pcm_s16le`; frames may split samples, so bytes are reassembled before the WAV
//! (mono, 16-bit, the session rate) is written with hound.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tracing::info;

use crate::exit::CommandError;
use crate::lmnt::{self, AudioFormat, LmntError, SessionEvent, SessionOptions};
use crate::secret::Secret;

/// Key sent to a server that needs none (`LMNT_BASE_URL` set, no `LMNT_API_KEY`).
const PLACEHOLDER_KEY: &str = "local";
/// Connect and liveness timeouts: generous, for a one-shot command.
const SPEAK_TIMEOUT: Duration = Duration::from_secs(15);
/// The nonce of the one flush (the first of the session, as LMNT's SDKs would number it).
const FLUSH_NONCE: u64 = 1;

/// `lmnt-bridge speak` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SpeakArgs {
    /// Voice id (`tones` for the local test voice).
    #[arg(long, default_value = "leah")]
    pub voice: String,
    /// 8000, 16000 or 24000.
    #[arg(long, default_value_t = 24_000, value_parser = parse_rate)]
    pub sample_rate: u32,
    /// ISO-639-1 language code (default: the server's `auto`).
    #[arg(long)]
    pub language: Option<String>,
    /// Output WAV file.
    #[arg(short, long, default_value = "speak.wav")]
    pub output: PathBuf,
    /// Text to speak; read from stdin, line by line as it arrives, when absent.
    pub text: Option<String>,
}

fn parse_rate(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(r @ (8000 | 16000 | 24000)) => Ok(r),
        _ => Err("must be 8000, 16000 or 24000".into()),
    }
}

/// What the reader collected.
struct Received {
    pcm: Vec<i16>,
    flushes: u32,
}

/// Runs one session: exit 78 when neither `LMNT_API_KEY` nor `LMNT_BASE_URL` is set.
pub async fn run(args: SpeakArgs) -> Result<(), CommandError> {
    let settings = crate::config::lmnt_from_env(&crate::config::process_env)?;
    let url = settings.session_url()?;
    // No key is allowed only with an explicit base URL (an LMNT-compatible server).
    let api_key = settings
        .api_key
        .unwrap_or_else(|| Secret::new(PLACEHOLDER_KEY));
    let mut opts = SessionOptions::new(url, api_key, args.voice.clone());
    opts.format = AudioFormat::PcmS16le;
    opts.sample_rate = args.sample_rate;
    opts.language = args.language.clone();
    opts.connect_timeout = SPEAK_TIMEOUT;
    opts.liveness_timeout = SPEAK_TIMEOUT;
    let (tx, mut events) = lmnt::connect(&opts).await.map_err(session_error)?;

    let reader = tokio::spawn(async move {
        let mut got = Received {
            pcm: Vec::new(),
            flushes: 0,
        };
        let mut odd: Option<u8> = None;
        while let Some(ev) = events.recv().await {
            match ev {
                SessionEvent::Audio(bytes) => {
                    let mut it = bytes.iter().copied();
                    if let Some(lo) = odd.take() {
                        match it.next() {
                            Some(hi) => got.pcm.push(i16::from_le_bytes([lo, hi])),
                            None => odd = Some(lo),
                        }
                    }
                    loop {
                        match (it.next(), it.next()) {
                            (Some(lo), Some(hi)) => got.pcm.push(i16::from_le_bytes([lo, hi])),
                            (Some(lo), None) => {
                                odd = Some(lo);
                                break;
                            }
                            _ => break,
                        }
                    }
                }
                SessionEvent::FlushComplete { .. } => got.flushes += 1,
                SessionEvent::Error(e) => return Err(e),
                SessionEvent::Closed { .. } => break,
                SessionEvent::Ready { .. }
                | SessionEvent::Timestamps(_)
                | SessionEvent::ResetComplete { .. } => {}
            }
        }
        Ok(got)
    });

    let sent = match &args.text {
        Some(t) => tx.send_text(t),
        None => stream_stdin(&tx).await,
    };
    let sent = sent
        .and_then(|()| tx.send_flush(FLUSH_NONCE))
        .and_then(|()| tx.send_finish());
    let received = reader
        .await
        .map_err(|e| CommandError::Failed(format!("speak: reader task: {e}")))?
        .map_err(session_error)?;
    sent.map_err(session_error)?;
    tx.close();

    write_wav(&args.output, args.sample_rate, &received.pcm)?;
    info!(
        output = %args.output.display(),
        samples = received.pcm.len(),
        flushes = received.flushes,
        "speak: wrote WAV"
    );
    eprintln!(
        "speak: wrote {} ({:.2} s of audio)",
        args.output.display(),
        received.pcm.len() as f64 / f64::from(args.sample_rate)
    );
    Ok(())
}

async fn stream_stdin(tx: &lmnt::SessionSender) -> Result<(), LmntError> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tx.send_text(&line)?;
        tx.send_text("\n")?;
    }
    Ok(())
}

fn session_error(e: LmntError) -> CommandError {
    match e {
        LmntError::Url(_) => CommandError::Config(e.to_string()),
        LmntError::ConnectRefused(_) | LmntError::ConnectTimeout(_) | LmntError::Connect(_) => {
            CommandError::Unavailable(e.to_string())
        }
        _ => CommandError::Failed(e.to_string()),
    }
}

fn write_wav(path: &std::path::Path, rate: u32, pcm: &[i16]) -> Result<(), CommandError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let fail = |e: hound::Error| CommandError::Failed(format!("{}: {e}", path.display()));
    let mut w = hound::WavWriter::create(path, spec).map_err(fail)?;
    for &s in pcm {
        w.write_sample(s).map_err(fail)?;
    }
    w.finalize().map_err(fail)
}
