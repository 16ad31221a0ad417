//! The voices of `local-tts` (interface.md section 5): `tones`, a deterministic test voice,
//! and espeak-ng for every other voice id. Output is mono f32 in [-1, 1] at the session rate.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::lmnt::protocol::Timestamp;

/// The characters `tones` sounds, in index order (index `i` sounds at 400 + 50·i Hz).
pub const TONES_ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
/// Tone length of one character.
pub const TONE_MS: u32 = 40;
/// Silence after each tone.
pub const TONE_GAP_MS: u32 = 20;
/// Raised-cosine ramp at both ends of each tone (avoids clicks).
pub const TONE_RAMP_MS: u32 = 5;
/// Tone amplitude, as a fraction of full scale.
pub const TONE_AMPLITUDE: f32 = 0.5;
/// Most espeak-ng output read for one piece (16-bit at 22.05 kHz: about 4 minutes); more is
/// cut off so a runaway process cannot exhaust memory.
pub const MAX_ESPEAK_BYTES: usize = 10 << 20;

/// The `tones` frequency of a character, or None for a character that is silence.
pub fn tone_frequency(c: char) -> Option<f32> {
    let c = c.to_ascii_lowercase();
    TONES_ALPHABET
        .chars()
        .position(|a| a == c)
        .map(|i| 400.0 + 50.0 * i as f32)
}

/// Renders `text` with the `tones` voice at `rate` Hz: 60 ms a character.
pub fn render_tones(text: &str, rate: u32) -> Vec<f32> {
    let per_ms = rate as usize / 1000;
    let tone_len = TONE_MS as usize * per_ms;
    let slot_len = (TONE_MS + TONE_GAP_MS) as usize * per_ms;
    let ramp_len = TONE_RAMP_MS as usize * per_ms;
    let mut out = Vec::with_capacity(text.chars().count() * slot_len);
    for c in text.chars() {
        let start = out.len();
        out.resize(start + slot_len, 0.0);
        let Some(freq) = tone_frequency(c) else {
            continue;
        };
        for (n, s) in out[start..start + tone_len].iter_mut().enumerate() {
            let t = n as f32 / rate as f32;
            let ramp = if n < ramp_len {
                0.5 * (1.0 - (std::f32::consts::PI * n as f32 / ramp_len as f32).cos())
            } else if n >= tone_len - ramp_len {
                let k = tone_len - 1 - n;
                0.5 * (1.0 - (std::f32::consts::PI * k as f32 / ramp_len as f32).cos())
            } else {
                1.0
            };
            *s = TONE_AMPLITUDE * ramp * (2.0 * std::f32::consts::PI * freq * t).sin();
        }
    }
    out
}

/// Word timestamps for `text` spoken over `seconds`, each character given an equal share
/// (exact for `tones`), starting at `offset` seconds.
pub fn word_timestamps(text: &str, seconds: f64, offset: f64) -> Vec<Timestamp> {
    let total = text.chars().count();
    if total == 0 {
        return Vec::new();
    }
    let per_char = seconds / total as f64;
    let mut out = Vec::new();
    let mut word = String::new();
    let mut word_start = 0usize;
    for (i, c) in text.chars().enumerate() {
        if c.is_whitespace() {
            if !word.is_empty() {
                out.push(Timestamp {
                    text: std::mem::take(&mut word),
                    start: offset + word_start as f64 * per_char,
                    duration: (i - word_start) as f64 * per_char,
                });
            }
        } else {
            if word.is_empty() {
                word_start = i;
            }
            word.push(c);
        }
    }
    if !word.is_empty() {
        out.push(Timestamp {
            text: word,
            start: offset + word_start as f64 * per_char,
            duration: (total - word_start) as f64 * per_char,
        });
    }
    out
}

/// Why espeak-ng gave no audio.
#[derive(Debug, thiserror::Error)]
pub enum EspeakError {
    /// The program could not be started (not installed?).
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("espeak-ng failed: {0}")]
    Failed(String),
    /// Its output was not a WAV file we understand.
    #[error("espeak-ng output is not 16-bit mono WAV: {0}")]
    BadWav(&'static str),
}

/// Speaks `text` with espeak-ng (`--stdout`, text on stdin) and resamples to `rate`.
/// `language` selects the espeak voice (`-v`); None uses espeak's default.
pub async fn render_espeak(
    program: &str,
    text: &str,
    language: Option<&str>,
    rate: u32,
) -> Result<Vec<f32>, EspeakError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("--stdout");
    if let Some(lang) = language {
        cmd.arg("-v").arg(lang);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| EspeakError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let text = text.to_owned();
        // Written concurrently so a large text cannot deadlock against a full stdout pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| EspeakError::Failed(e.to_string()))?;
    if !out.status.success() {
        return Err(EspeakError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let mut bytes = out.stdout;
    bytes.truncate(MAX_ESPEAK_BYTES);
    let (src_rate, samples) = parse_wav_s16_mono(&bytes)?;
    Ok(resample_linear(&samples, src_rate, rate))
}

/// Parses a 16-bit mono PCM WAV, tolerating the bogus sizes a streamed header carries (the
/// data chunk runs to the end of the input). Returns (rate, samples in [-1, 1]).
pub fn parse_wav_s16_mono(b: &[u8]) -> Result<(u32, Vec<f32>), EspeakError> {
    if b.get(0..4) != Some(b"RIFF") || b.get(8..12) != Some(b"WAVE") {
        return Err(EspeakError::BadWav("no RIFF/WAVE header"));
    }
    let u16_at = |i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut pos = 12usize;
    let mut rate = None;
    while let (Some(id), Some(len)) = (b.get(pos..pos + 4), u32_at(pos + 4)) {
        let body = pos + 8;
        if id == b"fmt " {
            let (Some(fmt), Some(ch), Some(r), Some(bits)) = (
                u16_at(body),
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 14),
            ) else {
                return Err(EspeakError::BadWav("short fmt chunk"));
            };
            if fmt != 1 || ch != 1 || bits != 16 || r == 0 {
                return Err(EspeakError::BadWav("not 16-bit mono PCM"));
            }
            rate = Some(r);
        } else if id == b"data" {
            let rate = rate.ok_or(EspeakError::BadWav("data before fmt"))?;
            let data = b.get(body..).unwrap_or_default();
            let samples = data
                .chunks_exact(2)
                .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                .collect();
            return Ok((rate, samples));
        }
        pos = body.saturating_add(len as usize + (len as usize & 1));
    }
    Err(EspeakError::BadWav("no data chunk"))
}

/// Linear-interpolation resampling. Good enough for a test voice; returns the input when the
/// rates match.
pub fn resample_linear(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|n| {
            let x = n as f64 * step;
            let i = x as usize;
            let frac = (x - i as f64) as f32;
            let a = input.get(i).copied().unwrap_or(0.0);
            let b = input.get(i + 1).copied().unwrap_or(a);
            a + (b - a) * frac
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tones_lengths_and_levels() {
        for rate in [8000, 16000, 24000] {
            let s = render_tones("a b", rate);
            assert_eq!(s.len(), 3 * 60 * rate as usize / 1000);
            let peak = s.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(peak > 0.49 && peak <= 0.5, "{peak}");
            assert_eq!(s[0], 0.0);
            let slot = 60 * rate as usize / 1000;
            assert!(s[slot..2 * slot].iter().all(|v| *v == 0.0));
        }
        assert_eq!(tone_frequency('A'), Some(400.0));
        assert_eq!(tone_frequency('9'), Some(400.0 + 50.0 * 35.0));
        assert_eq!(tone_frequency('é'), None);
    }

    #[test]
    fn timestamps_per_word() {
        let ts = word_timestamps("ab cd", 0.3, 1.0);
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[1].text, "cd");
        assert!((ts[1].start - 1.18).abs() < 1e-9);
        assert!((ts[1].duration - 0.12).abs() < 1e-9);
    }

    #[test]
    fn wav_parser_survives_garbage() {
        assert!(parse_wav_s16_mono(b"").is_err());
        assert!(parse_wav_s16_mono(b"RIFF\0\0\0\0WAVEfmt \xff\xff\xff\xff").is_err());
        let mut w = b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x01\0\x01\0\x22\x56\0\0\x44\xac\0\0\x02\0\x10\0data\xff\xff\xff\xff".to_vec();
        w.extend_from_slice(&[0, 0x40, 0, 0xc0, 7]);
        let (rate, s) = parse_wav_s16_mono(&w).unwrap();
        assert_eq!((rate, s), (22050, vec![0.5, -0.5]));
    }

    #[test]
    fn resampling_keeps_duration() {
        let x: Vec<f32> = (0..22050).map(|i| (i as f32 * 0.01).sin()).collect();
        assert_eq!(resample_linear(&x, 22050, 8000).len(), 8000);
        assert_eq!(resample_linear(&x, 22050, 24000).len(), 24000);
    }
}
