//! The streaming transcoder: LMNT bytes -> samples -> the codec's PCM rate -> 20 ms frames.
//!
//! ## Contract
//!
//! - The resampler runs on fixed 10 ms blocks and keeps its state across chunks and across
//!   gaps in delivery; it is never reset on idle. [`Transcoder::reset`] (barge-in) is the only
//!   reset.
//! - Every input sample comes out exactly once. Within an utterance, input sample `i` is
//!   centred at output sample `i × r + D` of that utterance (`r` = 48000 / input rate,
//!   `D` = [`Transcoder::delay`], 240 at 48 kHz), and its filter response ends before
//!   `i × r + 2D`. When the input rate is the output rate there is no resampler: `r` = 1,
//!   `D` = 0, and samples pass straight into frames.
//! - [`Transcoder::finish_utterance`] pads the last input block with silence, pumps silence
//!   through the resampler until the whole filter tail of the last sample is out, and pads
//!   the last partial frame with silence. An utterance of `N` input samples therefore yields
//!   exactly `ceil((N × r + 2D) / F)` frames of `F` samples (none when `N = 0`), and the next utterance
//!   starts from a resampler holding only silence.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::pcm::{InputFormat, SampleDecoder};
use super::{AudioError, FRAME_MS, INPUT_RATES};

/// Resampler block length. 10 ms: 5 ms of delay and a cutoff of 3.3 kHz for 8 kHz input
/// (5 ms blocks cut at 2.6 kHz; 20 ms blocks delay 10 ms). See the module docs of `audio`.
pub const RESAMPLER_BLOCK_MS: u32 = 10;

/// One 20 ms frame of mono PCM at the output rate, boxed so a queue of them moves pointers,
/// not samples.
pub type PcmFrame = Box<[i16]>;

/// Converts one call's LMNT audio into 20 ms PCM frames at the output rate. See the module docs.
pub struct Transcoder {
    decoder: SampleDecoder,
    /// `None` when the input rate is the output rate.
    resampler: Option<Fft<f32>>,
    input_rate: u32,
    /// Samples in one output frame.
    frame_samples: usize,
    /// Input samples per resampler block.
    block_in: usize,
    /// Output samples per resampler block.
    block_out: usize,
    /// Output samples per input sample (1, 2, 3 or 6).
    ratio: u64,
    /// Resampler delay in output samples.
    delay: u64,
    /// Decoded input not yet a whole block.
    pending_in: Vec<f32>,
    /// Resampled output not yet a whole frame (fewer than 960 samples between calls).
    pending_out: Vec<f32>,
    /// Scratch for one block of resampler output.
    block_buf: Vec<f32>,
    /// Real (non-padding) input samples of the current utterance.
    utt_in: u64,
    /// Output samples produced for the current utterance (emitted frames and `pending_out`).
    utt_out: u64,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("input_rate", &self.input_rate)
            .field("utt_in", &self.utt_in)
            .field("utt_out", &self.utt_out)
            .finish_non_exhaustive()
    }
}

impl Transcoder {
    /// A transcoder for LMNT audio in `format` at `input_rate` (8000, 16000 or 24000 Hz) to
    /// frames at `output_rate`, which must be a whole multiple of the input rate (48 kHz for
    /// Opus; the input rate itself for a codec that takes it as is).
    pub fn new(format: InputFormat, input_rate: u32, output_rate: u32) -> Result<Self, AudioError> {
        if !INPUT_RATES.contains(&input_rate) {
            return Err(AudioError::UnsupportedSampleRate { rate: input_rate });
        }
        if output_rate < input_rate || !output_rate.is_multiple_of(input_rate) {
            return Err(AudioError::UnsupportedConversion {
                input_rate,
                output_rate,
            });
        }
        let block_in = (input_rate * RESAMPLER_BLOCK_MS / 1000) as usize;
        let block_out = (output_rate * RESAMPLER_BLOCK_MS / 1000) as usize;
        let resampler = if input_rate == output_rate {
            None
        } else {
            let resampler = Fft::<f32>::new(
                input_rate as usize,
                output_rate as usize,
                block_in,
                1,
                FixedSync::Both,
            )
            .map_err(|e| AudioError::ResamplerInit(e.to_string()))?;
            if resampler.input_frames_next() != block_in
                || resampler.output_frames_next() != block_out
            {
                return Err(AudioError::ResamplerInit(format!(
                    "expected blocks of {block_in} -> {block_out}, got {} -> {}",
                    resampler.input_frames_next(),
                    resampler.output_frames_next()
                )));
            }
            Some(resampler)
        };
        let delay = resampler.as_ref().map_or(0, |r| r.output_delay() as u64);
        let frame_samples = (u64::from(output_rate) * FRAME_MS / 1000) as usize;
        Ok(Transcoder {
            decoder: SampleDecoder::new(format),
            resampler,
            input_rate,
            frame_samples,
            block_in,
            block_out,
            ratio: u64::from(output_rate / input_rate),
            delay,
            pending_in: Vec::with_capacity(block_in * 4),
            pending_out: Vec::with_capacity(frame_samples + block_out),
            block_buf: vec![0.0; block_out],
            utt_in: 0,
            utt_out: 0,
        })
    }

    /// The input sample rate.
    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// Samples in one output frame (20 ms at the output rate).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The resampler delay `D` in output samples: how far each input sample's centre lies
    /// behind its nominal output position.
    pub fn delay(&self) -> u64 {
        self.delay
    }

    /// Real input samples received in the current utterance (padding excluded).
    pub fn utterance_samples(&self) -> u64 {
        self.utt_in
    }

    /// Decodes and resamples `bytes`, calling `emit` for each completed frame (in order).
    pub fn push<F: FnMut(PcmFrame)>(
        &mut self,
        bytes: &[u8],
        emit: &mut F,
    ) -> Result<(), AudioError> {
        let before = self.pending_in.len();
        self.decoder.push(bytes, &mut self.pending_in);
        self.utt_in += (self.pending_in.len() - before) as u64;
        self.process_blocks(emit)
    }

    /// Ends the utterance: pads and flushes as the module docs say, calling `emit` for the
    /// remaining frames. Returns the number of bytes of a half-received sample that had to be
    /// dropped (nonzero only when the sender cut a sample in half at the very end).
    pub fn finish_utterance<F: FnMut(PcmFrame)>(
        &mut self,
        emit: &mut F,
    ) -> Result<usize, AudioError> {
        let dropped = self.decoder.discard_carry();
        if self.utt_in > 0 {
            let rem = self.pending_in.len() % self.block_in;
            if rem != 0 {
                self.pending_in
                    .resize(self.pending_in.len() + self.block_in - rem, 0.0);
            }
            self.process_blocks(emit)?;
            let tail_end = self.utt_in * self.ratio + 2 * self.delay;
            while self.utt_out < tail_end {
                self.pending_in.resize(self.block_in, 0.0);
                self.process_blocks(emit)?;
            }
            if !self.pending_out.is_empty() {
                self.pending_out.resize(self.frame_samples, 0.0);
                emit_frames(&mut self.pending_out, self.frame_samples, emit);
            }
        }
        self.utt_in = 0;
        self.utt_out = 0;
        Ok(dropped)
    }

    /// Forgets everything in flight (barge-in): carried bytes, partial blocks and frames and
    /// the resampler's memory, so nothing of the interrupted audio leaks into the next one.
    pub fn reset(&mut self) {
        self.decoder.discard_carry();
        self.pending_in.clear();
        self.pending_out.clear();
        if let Some(resampler) = &mut self.resampler {
            resampler.reset();
        }
        self.utt_in = 0;
        self.utt_out = 0;
    }

    fn process_blocks<F: FnMut(PcmFrame)>(&mut self, emit: &mut F) -> Result<(), AudioError> {
        let Some(resampler) = &mut self.resampler else {
            // Same rate: whole blocks pass as they are, so padding and tails behave as with
            // a resampler of zero delay.
            let whole = self.pending_in.len() - self.pending_in.len() % self.block_in;
            self.pending_out.extend(self.pending_in.drain(..whole));
            self.utt_out += whole as u64;
            emit_frames(&mut self.pending_out, self.frame_samples, emit);
            return Ok(());
        };
        let mut consumed = 0;
        while self.pending_in.len() - consumed >= self.block_in {
            let block = &self.pending_in[consumed..consumed + self.block_in];
            let input = InterleavedSlice::new(block, 1, self.block_in)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let mut output = InterleavedSlice::new_mut(&mut self.block_buf, 1, self.block_out)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let (_, produced) = resampler
                .process_into_buffer(&input, &mut output, None)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let produced = produced.min(self.block_buf.len());
            self.pending_out
                .extend_from_slice(&self.block_buf[..produced]);
            self.utt_out += produced as u64;
            consumed += self.block_in;
            emit_frames(&mut self.pending_out, self.frame_samples, emit);
        }
        self.pending_in.drain(..consumed);
        Ok(())
    }
}

/// Emits every whole frame of `n` samples at the front of `pending` (in order) and keeps the
/// rest.
fn emit_frames<F: FnMut(PcmFrame)>(pending: &mut Vec<f32>, n: usize, emit: &mut F) {
    let mut start = 0;
    while pending.len() - start >= n {
        let frame: PcmFrame = pending[start..start + n]
            .iter()
            .map(|&x| to_i16(x))
            .collect();
        emit(frame);
        start += n;
    }
    pending.drain(..start);
}

/// Float sample in [-1, 1] (slightly beyond after filtering) to saturated 16-bit.
fn to_i16(x: f32) -> i16 {
    (x * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}
