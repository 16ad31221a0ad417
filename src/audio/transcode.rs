//! The streaming transcoder: LMNT bytes -> samples -> 48 kHz -> 20 ms frames.
//!
//! ## Contract
//!
//! - The resampler runs on fixed 10 ms blocks and keeps its state across chunks and across
//!   gaps in delivery; it is never reset on idle. [`Transcoder::reset`] (barge-in) is the only
//!   reset.
//! - Every input sample comes out exactly once. Within an utterance, input sample `i` is
//!   centred at output sample `i × r + D` of that utterance (`r` = 48000 / input rate,
//!   `D` = [`Transcoder::delay`] = 240), and its filter response ends before `i × r + 2D`.
//! - [`Transcoder::finish_utterance`] pads the last input block with silence, pumps silence
//!   through the resampler until the whole filter tail of the last sample is out, and pads
//!   the last partial frame with silence. An utterance of `N` input samples therefore yields
//!   exactly `ceil((N × r + 2D) / 960)` frames (none when `N = 0`), and the next utterance
//!   starts from a resampler holding only silence.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::pcm::{InputFormat, SampleDecoder};
use super::{AudioError, FRAME_SAMPLES, INPUT_RATES, OUTPUT_RATE};

/// Resampler block length. 10 ms: 5 ms of delay and a cutoff of 3.3 kHz for 8 kHz input
/// (5 ms blocks cut at 2.6 kHz; 20 ms blocks delay 10 ms). See the module docs of `audio`.
pub const RESAMPLER_BLOCK_MS: u32 = 10;

/// One 20 ms frame of 48 kHz mono PCM, boxed so a queue of them moves pointers, not samples.
pub type PcmFrame = Box<[i16; FRAME_SAMPLES]>;

/// Converts one call's LMNT audio into 20 ms PCM frames at 48 kHz. See the module docs.
pub struct Transcoder {
    decoder: SampleDecoder,
    resampler: Fft<f32>,
    input_rate: u32,
    /// Input samples per resampler block.
    block_in: usize,
    /// Output samples per resampler block.
    block_out: usize,
    /// Output samples per input sample (2, 3 or 6).
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
    /// A transcoder for LMNT audio in `format` at `input_rate` (8000, 16000 or 24000 Hz).
    pub fn new(format: InputFormat, input_rate: u32) -> Result<Self, AudioError> {
        if !INPUT_RATES.contains(&input_rate) {
            return Err(AudioError::UnsupportedSampleRate { rate: input_rate });
        }
        let block_in = (input_rate * RESAMPLER_BLOCK_MS / 1000) as usize;
        let block_out = (OUTPUT_RATE * RESAMPLER_BLOCK_MS / 1000) as usize;
        let resampler = Fft::<f32>::new(
            input_rate as usize,
            OUTPUT_RATE as usize,
            block_in,
            1,
            FixedSync::Both,
        )
        .map_err(|e| AudioError::ResamplerInit(e.to_string()))?;
        if resampler.input_frames_next() != block_in || resampler.output_frames_next() != block_out
        {
            return Err(AudioError::ResamplerInit(format!(
                "expected blocks of {block_in} -> {block_out}, got {} -> {}",
                resampler.input_frames_next(),
                resampler.output_frames_next()
            )));
        }
        let delay = resampler.output_delay() as u64;
        Ok(Transcoder {
            decoder: SampleDecoder::new(format),
            resampler,
            input_rate,
            block_in,
            block_out,
            ratio: u64::from(OUTPUT_RATE / input_rate),
            delay,
            pending_in: Vec::with_capacity(block_in * 4),
            pending_out: Vec::with_capacity(FRAME_SAMPLES + block_out),
            block_buf: vec![0.0; block_out],
            utt_in: 0,
            utt_out: 0,
        })
    }

    /// The input sample rate.
    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// The resampler delay `D` in 48 kHz samples: how far each input sample's centre lies
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
                self.pending_out.resize(FRAME_SAMPLES, 0.0);
                self.emit_frames(emit);
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
        self.resampler.reset();
        self.utt_in = 0;
        self.utt_out = 0;
    }

    fn process_blocks<F: FnMut(PcmFrame)>(&mut self, emit: &mut F) -> Result<(), AudioError> {
        let mut consumed = 0;
        while self.pending_in.len() - consumed >= self.block_in {
            let block = &self.pending_in[consumed..consumed + self.block_in];
            let input = InterleavedSlice::new(block, 1, self.block_in)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let mut output = InterleavedSlice::new_mut(&mut self.block_buf, 1, self.block_out)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let (_, produced) = self
                .resampler
                .process_into_buffer(&input, &mut output, None)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let produced = produced.min(self.block_buf.len());
            self.pending_out
                .extend_from_slice(&self.block_buf[..produced]);
            self.utt_out += produced as u64;
            consumed += self.block_in;
            self.emit_frames(emit);
        }
        self.pending_in.drain(..consumed);
        Ok(())
    }

    fn emit_frames<F: FnMut(PcmFrame)>(&mut self, emit: &mut F) {
        let mut start = 0;
        while self.pending_out.len() - start >= FRAME_SAMPLES {
            let mut frame: PcmFrame = Box::new([0; FRAME_SAMPLES]);
            for (dst, src) in frame
                .iter_mut()
                .zip(&self.pending_out[start..start + FRAME_SAMPLES])
            {
                *dst = to_i16(*src);
            }
            emit(frame);
            start += FRAME_SAMPLES;
        }
        self.pending_out.drain(..start);
    }
}

/// Float sample in [-1, 1] (slightly beyond after filtering) to saturated 16-bit.
fn to_i16(x: f32) -> i16 {
    (x * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}
