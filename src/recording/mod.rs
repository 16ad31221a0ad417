//! Call recording: a stereo WAV of one call, left the caller, right the bot, on the call's own
//! timeline, streamed to disk as the call goes.
//!
//! ## Data flow
//!
//! ```text
//! call core ── bot frame (slot, PCM at the codec's rate) ──▶ mixer::RecordingMixer
//!           ── caller frame (arrival slot, RTP time, 16 kHz) ──▶     │ (pure: no clock, no I/O)
//! driver ── drain(now_slot) ──▶ [left, right] samples at 16 kHz ─────┘
//!        ── writer::Recorder::write ──bounded queue──▶ writer thread ──hound──▶ <dir>/<call>.wav
//! daemon start ── repair::repair_dir(dir) ──▶ headers of files a crash left unfinished rewritten
//! ```
//!
//! ## Timeline contract
//!
//! The call's timeline is its frame slots: slot `n` covers samples `[n × 320, (n + 1) × 320)`
//! of the recording ([`RECORDING_RATE`], 20 ms slots), slot 0 being when media went live. The
//! bot's frame of slot `n` lands in slot `n` (the resampler's delay is compensated exactly).
//! The caller's first frame is placed at the slot it arrived in; every later one by its RTP
//! timestamp relative to that anchor, so network jitter and reordering do not move it. A slot
//! is written to disk once it is [`mixer::LATE_WINDOW_SLOTS`] old, which is how late a caller
//! frame may arrive and still be placed. Memory per call is bounded by that window, whatever
//! the call's length; the file holds the whole call.
//!
//! ## Failure contract
//!
//! A recording never affects its call. The writer runs on its own thread behind a bounded
//! queue that the call fills with `try_send`; a full disk, an I/O error or a writer that falls
//! behind stops the recording with one [`RecordingError`] that the call reports once. The
//! writer rewrites the WAV header every [`writer::FLUSH_EVERY_BYTES`], so a file cut short by a
//! crash loses at most that much, and [`repair::repair_dir`] fixes its header at the next start.

pub mod mixer;
pub mod repair;
pub mod writer;

use std::io;
use std::path::PathBuf;

use crate::fault::Fault;

pub use mixer::{CallerPush, MixerStats, RecordingMixer, StereoSample, RECORDING_RATE};
pub use repair::{repair_dir, repair_file, RepairOutcome, RepairReport};
pub use writer::Recorder;

/// A failure of a call's recording. Each variant is one cause; [`RecordingError::fault`] says
/// whose. None of them ends the call.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The bot's codec rate cannot be resampled to [`RECORDING_RATE`] in whole 10 ms blocks
    /// (zero, not a multiple of 100 Hz, or above [`mixer::MAX_BOT_RATE`]). Internal: the codec
    /// module only negotiates rates that can.
    #[error("cannot record bot audio at {rate} Hz")]
    UnsupportedRate {
        /// The rejected rate.
        rate: u32,
    },
    /// rubato refused to build or run the bot's resampler on correctly sized blocks (a bug).
    #[error("recording resampler failed: {0}")]
    Resample(String),
    /// A bot frame did not hold one 20 ms frame at the bot's rate; the slot was recorded as
    /// silence. Internal: the call hands the mixer the frames it sends.
    #[error("bot frame of {got} samples, expected {expected}")]
    FrameLength {
        /// Samples in 20 ms at the bot's rate.
        expected: usize,
        /// Samples received.
        got: usize,
    },
    /// The call id cannot be used as a file name (empty, too long, or not made of ASCII
    /// letters, digits, `-` and `_`). Internal: call ids are ours.
    #[error("call id {0:?} is not a valid recording file name")]
    InvalidCallId(String),
    /// The recording directory or file could not be created: the state directory is missing,
    /// not writable or full, or a recording of that name exists. The operator's to fix.
    #[error("cannot create recording {path}: {source}")]
    Create {
        /// The file (or directory) that could not be created.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The writer thread could not be started (the process is out of threads or memory).
    #[error("cannot start the recording writer: {0}")]
    Spawn(#[source] io::Error),
    /// Writing or finalizing the file failed, a full disk most often. The file keeps what was
    /// written up to the last header flush; the next start repairs it.
    #[error("writing recording {path} failed: {source}")]
    Write {
        /// The recording.
        path: PathBuf,
        /// hound's error (an I/O error inside).
        #[source]
        source: hound::Error,
    },
    /// The writer thread fell [`writer::QUEUE_BLOCKS`] blocks behind the call (a stalled or
    /// very slow disk, or an overloaded host): the recording stopped rather than hold the
    /// call's audio in memory. The file is finalized with what was written.
    #[error("recording writer fell behind the call")]
    Lagged,
    /// The recording reached the WAV format's size limit ([`writer::MAX_DATA_BYTES`], about
    /// 18 hours at 16 kHz stereo). The file is finalized and holds the first 18 hours.
    #[error("recording reached the WAV size limit")]
    TooLong,
    /// The writer thread panicked (a bug); the file is repaired at the next start.
    #[error("recording writer panicked")]
    WriterPanicked,
    /// The recording directory could not be listed for repair.
    #[error("cannot list recordings in {path}: {source}")]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A `.wav` file in the recording directory is not a WAV this module can repair (no
    /// RIFF/WAVE header, no `fmt ` or `data` chunk). It is left untouched.
    #[error("{path} is not a repairable WAV: {reason}")]
    NotWav {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Reading or rewriting a file's header during repair failed.
    #[error("cannot repair {path}: {source}")]
    Repair {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl RecordingError {
    /// Whose fault the failure is. Everything about the directory and its disk is the
    /// operator's ([`Fault::Config`]); everything else is this process's ([`Fault::Internal`]).
    pub fn fault(&self) -> Fault {
        match self {
            RecordingError::Create { .. }
            | RecordingError::Write { .. }
            | RecordingError::ListDir { .. }
            | RecordingError::NotWav { .. }
            | RecordingError::Repair { .. } => Fault::Config,
            RecordingError::UnsupportedRate { .. }
            | RecordingError::Resample(_)
            | RecordingError::FrameLength { .. }
            | RecordingError::InvalidCallId(_)
            | RecordingError::Spawn(_)
            | RecordingError::Lagged
            | RecordingError::TooLong
            | RecordingError::WriterPanicked => Fault::Internal,
        }
    }
}

#[cfg(test)]
mod tests;
