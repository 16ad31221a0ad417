//! LMNT audio in, 20 ms PCM frames at the call codec's rate out ([`crate::codec`] encodes
//! them).
//!
//! ## Data flow
//!
//! ```text
//! LMNT bytes ──pcm::SampleDecoder──▶ f32 samples ──transcode::Transcoder──▶ 20 ms frames
//!                                                  (rubato Fft, 10 ms blocks, only when the
//!                                                   output rate differs from the input's)
//! ```
//!
//! The daemon asks LMNT for the rate its encoder takes (Opus encodes 8, 16 and 24 kHz
//! natively; G.711 takes 8 kHz), so LMNT's audio is framed as it comes (480 samples a frame at
//! the default 24 kHz). The resampler serves rates that differ: the caller's 8 kHz G.711 on
//! its way to the bot's 16 kHz.
//!
//! Nothing here reads a clock: the playout decides when a frame is sent.
//!
//! ## Latency a resampler adds
//!
//! The resampler is rubato's synchronous `Fft` with both sides fixed to 10 ms blocks
//! ([`transcode::RESAMPLER_BLOCK_MS`]). Its delay is half an output block: 240 samples at 48 kHz,
//! **5 ms**, for every input rate (8, 16 and 24 kHz). Measured alternatives: 20 ms blocks delay
//! 10 ms; 5 ms blocks delay 2.5 ms but cut an 8 kHz input at 2.6 kHz (10 ms blocks: 3.3 kHz, the
//! telephone band). Sinc (length 128) delays 128 to 384 samples and varies its output size per
//! call; polynomial delays 4 to 12 samples but aliases. Opus adds its own 6.5 ms look-ahead.

pub mod pcm;
pub mod transcode;

use crate::fault::Fault;

pub use pcm::{InputFormat, SampleDecoder};
pub use transcode::{PcmFrame, Transcoder};

/// The length of one frame in milliseconds: the unit of pacing and of RTP time.
pub const FRAME_MS: u64 = 20;
/// The LMNT sample rates a speech session can deliver (lmnt-protocol.md, `sample_rate`).
pub const INPUT_RATES: [u32; 3] = [8_000, 16_000, 24_000];

/// A failure in the audio path. Each variant is one cause; [`AudioError::fault`] says whose.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The configured LMNT sample rate is not 8000, 16000 or 24000.
    #[error("unsupported input sample rate {rate} Hz (expected 8000, 16000 or 24000)")]
    UnsupportedSampleRate {
        /// The rejected rate.
        rate: u32,
    },
    /// The output rate is not a whole multiple of the input rate (a codec this daemon cannot
    /// feed from LMNT's rates).
    #[error("cannot convert {input_rate} Hz to {output_rate} Hz")]
    UnsupportedConversion {
        /// LMNT's rate.
        input_rate: u32,
        /// The codec's PCM rate.
        output_rate: u32,
    },
    /// An Opus setting is out of range (bitrate, loss percentage or complexity).
    #[error("invalid Opus setting: {0}")]
    InvalidOpusSetting(&'static str),
    /// rubato refused to build the resampler for a valid rate (a bug or a missing CPU feature).
    #[error("resampler construction failed: {0}")]
    ResamplerInit(String),
    /// rubato failed while resampling a correctly sized block (a bug).
    #[error("resampling failed: {0}")]
    Resample(String),
    /// libopus refused to create or configure the encoder or the decoder.
    #[error("Opus codec initialisation failed: {0}")]
    OpusInit(audiopus::Error),
    /// A frame handed to an encoder does not hold the codec's 20 ms of samples (a bug).
    #[error("frame of {got} samples where the codec takes {expected}")]
    FrameLength {
        /// Samples in the frame.
        got: usize,
        /// Samples the codec takes per 20 ms.
        expected: usize,
    },
    /// libopus failed to encode a correctly sized frame (a bug or memory exhaustion).
    #[error("Opus encode failed: {0}")]
    OpusEncode(audiopus::Error),
    /// The caller sent an RTP packet with an empty Opus payload.
    #[error("empty Opus payload from the caller")]
    EmptyPayload,
    /// The caller sent an Opus payload libopus cannot decode.
    #[error("undecodable Opus payload from the caller: {0}")]
    BadPayload(audiopus::Error),
    /// Audio arrived for an utterance older than the one being received (a bridge bug).
    #[error("audio for utterance {got} after utterance {current} began")]
    UtteranceOutOfOrder {
        /// The utterance id the audio was tagged with.
        got: u64,
        /// The utterance currently being received.
        current: u64,
    },
}

impl AudioError {
    /// Whose fault the failure is.
    pub fn fault(&self) -> Fault {
        match self {
            AudioError::UnsupportedSampleRate { .. } | AudioError::InvalidOpusSetting(_) => {
                Fault::Config
            }
            AudioError::EmptyPayload | AudioError::BadPayload(_) => Fault::Caller,
            AudioError::UnsupportedConversion { .. }
            | AudioError::ResamplerInit(_)
            | AudioError::Resample(_)
            | AudioError::OpusInit(_)
            | AudioError::OpusEncode(_)
            | AudioError::FrameLength { .. }
            | AudioError::UtteranceOutOfOrder { .. } => Fault::Internal,
        }
    }

    /// Whether trying the same operation again can succeed. A bad caller packet is skipped, so
    /// the next packet may decode: that is the only retryable case.
    pub fn retryable(&self) -> bool {
        matches!(self, AudioError::EmptyPayload | AudioError::BadPayload(_))
    }
}
