//! A decoder for the `tones` test voice (interface.md section 5): PCM in, text out.
//!
//! Self-contained (std only) so any test can `#[path]`-include it. Built for recordings of
//! live calls, not only for clean server output:
//!
//! - tone onsets are found by **energy**, not on a fixed grid from sample 0, so an unknown
//!   start offset, silence gaps between utterances, resampling and Opus coding are fine;
//! - each tone's character is the strongest of the 36 candidate frequencies (Goertzel over
//!   28 ms inside the 40 ms tone);
//! - **spaces**: silence between two tones is counted in 60 ms slots: a gap of `k` empty
//!   slots between tones gives `k` spaces. Every character outside `[a-z0-9]` (space,
//!   punctuation) is one silent slot, so compare against [`expected`]. Silence before the
//!   first tone and after the last is not reported (its length is unknown). Across utterance
//!   gaps of arbitrary length, compare with [`collapse_spaces`] on both sides.

/// The characters of the voice, in frequency order (400 + 50·i Hz).
pub const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
/// One character's slot.
pub const SLOT_MS: f64 = 60.0;
/// RMS over a 5 ms window above which a tone is present (a tone's RMS is about 0.35).
const ON_THRESHOLD: f64 = 0.05;
/// Shortest above-threshold run that counts as a tone (shorter: a click).
const MIN_TONE_MS: f64 = 15.0;
/// A run longer than this holds more than one tone (gaps filled by codec noise): it is cut
/// into 60 ms slots.
const MAX_SINGLE_TONE_MS: f64 = 52.0;
/// The Goertzel window starts this long after the detected onset and lasts this long.
const ANALYSIS_OFFSET_MS: f64 = 6.0;
const ANALYSIS_MS: f64 = 28.0;

/// The text `text` should decode to: lowercased, every character outside the alphabet a
/// space, leading and trailing spaces trimmed.
pub fn expected(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if ALPHABET.contains(c) {
                c
            } else {
                ' '
            }
        })
        .collect();
    mapped.trim_matches(' ').to_owned()
}

/// Collapses runs of spaces into one (for audio with utterance gaps of any length).
pub fn collapse_spaces(s: &str) -> String {
    s.split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes 16-bit PCM.
pub fn decode_i16(samples: &[i16], rate: u32) -> String {
    let f: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
    decode(&f, rate)
}

/// Decodes mono samples in [-1, 1] at `rate` Hz (any rate from 8 kHz up).
pub fn decode(samples: &[f32], rate: u32) -> String {
    let per_ms = f64::from(rate) / 1000.0;
    let hop = per_ms.round().max(1.0) as usize; // 1 ms
    let win = (5.0 * per_ms).round().max(1.0) as usize;
    // Energy per 1 ms hop, over a 5 ms window centered on the hop.
    let n_hops = samples.len() / hop;
    let on: Vec<bool> = (0..n_hops)
        .map(|h| {
            let center = h * hop;
            let lo = center.saturating_sub(win / 2);
            let hi = (lo + win).min(samples.len());
            let seg = &samples[lo..hi];
            if seg.is_empty() {
                return false;
            }
            let e: f64 = seg
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                / seg.len() as f64;
            e.sqrt() > ON_THRESHOLD
        })
        .collect();
    // Runs of "on" hops: (start_ms, len_ms).
    let mut runs = Vec::new();
    let mut h = 0;
    while h < on.len() {
        if on[h] {
            let start = h;
            while h < on.len() && on[h] {
                h += 1;
            }
            runs.push((start as f64, (h - start) as f64));
        } else {
            h += 1;
        }
    }
    // Tone onsets in ms.
    let mut onsets = Vec::new();
    for (start, len) in runs {
        if len < MIN_TONE_MS {
            continue;
        }
        if len <= MAX_SINGLE_TONE_MS {
            onsets.push(start);
        } else {
            let n = ((len + 20.0) / SLOT_MS).round().max(1.0) as usize;
            onsets.extend((0..n).map(|k| start + k as f64 * SLOT_MS));
        }
    }
    let mut out = String::new();
    let mut prev: Option<f64> = None;
    for onset in onsets {
        if let Some(p) = prev {
            let slots = ((onset - p) / SLOT_MS).round() as i64;
            for _ in 1..slots.max(1) {
                out.push(' ');
            }
        }
        prev = Some(onset);
        out.push(classify(samples, rate, onset));
    }
    out
}

fn classify(samples: &[f32], rate: u32, onset_ms: f64) -> char {
    let per_ms = f64::from(rate) / 1000.0;
    let lo = ((onset_ms + ANALYSIS_OFFSET_MS) * per_ms) as usize;
    let hi = (lo + (ANALYSIS_MS * per_ms) as usize).min(samples.len());
    let seg = if lo < hi { &samples[lo..hi] } else { &[][..] };
    let mut best = ('?', 0.0f64);
    for (i, c) in ALPHABET.chars().enumerate() {
        let p = goertzel(seg, rate, 400.0 + 50.0 * i as f64);
        if p > best.1 {
            best = (c, p);
        }
    }
    best.0
}

fn goertzel(seg: &[f32], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in seg {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}
