//! The recording's I/O: a dedicated thread owning a `hound::WavWriter`, fed over a bounded
//! queue the call never waits on.
//!
//! ## Contract
//!
//! - [`Recorder::start`] creates `<dir>/<call_id>.wav` (never overwriting one) with its
//!   header, 2 channels at [`RECORDING_RATE`], 16-bit, and starts the writer thread.
//! - [`Recorder::write`] never blocks: it gathers samples into blocks of [`BLOCK_SAMPLES`]
//!   and hands each to the thread with `try_send` on a queue of [`QUEUE_BLOCKS`].
//! - The thread rewrites the header every [`FLUSH_EVERY_BYTES`] (hound's `flush`), so a file
//!   cut short by a crash is a valid WAV of all but its last second or so, and
//!   [`super::repair`] recovers the rest.
//! - The recording stops at the first failure: the queue is full ([`RecordingError::Lagged`]),
//!   a write fails ([`RecordingError::Write`], a full disk), or the WAV size limit is reached
//!   ([`RecordingError::TooLong`]). The error is returned once, by the next
//!   [`Recorder::write`], [`Recorder::poll_error`] or [`Recorder::finish`]; later writes are
//!   ignored. What was written stays in the file.
//! - [`Recorder::finish`] (hang-up, shutdown) hands over the last block, waits for the thread
//!   to finalize the header and returns the path. It blocks for as long as the disk takes to
//!   write what is queued (at most [`QUEUE_BLOCKS`] blocks): call it off the runtime
//!   (`spawn_blocking`). Dropping a `Recorder` without `finish` lets the thread finalize on
//!   its own.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use super::mixer::{StereoSample, RECORDING_RATE};
use super::RecordingError;

/// Stereo samples in one block handed to the writer thread: 100 ms, so the queue's length in
/// blocks is a length in time whatever size of writes the call makes.
pub const BLOCK_SAMPLES: usize = RECORDING_RATE as usize / 10;
/// Blocks the queue holds (5 s of audio, 320 KB): how long the disk may stall before the
/// recording stops with [`RecordingError::Lagged`] rather than hold more of the call in memory.
pub const QUEUE_BLOCKS: usize = 50;
/// Bytes of samples between header rewrites (1 s of audio): what a crash can leave outside
/// the header's sizes, for the cost of two seeks a second.
pub const FLUSH_EVERY_BYTES: u64 = BYTES_PER_SAMPLE * RECORDING_RATE as u64;
/// Largest data chunk a WAV can describe: its RIFF size (data + 36 header bytes) is a `u32`.
/// About 18.6 hours at 16 kHz stereo 16-bit.
pub const MAX_DATA_BYTES: u64 = (u32::MAX as u64 - 36) / BYTES_PER_SAMPLE * BYTES_PER_SAMPLE;
/// Longest call id accepted as a file name (ours are a node id, `_` and 32 hex digits).
pub const MAX_CALL_ID_LEN: usize = 128;
/// Bytes per stereo sample: two 16-bit channels.
const BYTES_PER_SAMPLE: u64 = 4;

/// The writer thread's limits; the constants above, smaller in tests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) queue_blocks: usize,
    pub(super) flush_every_bytes: u64,
    pub(super) max_data_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_blocks: QUEUE_BLOCKS,
            flush_every_bytes: FLUSH_EVERY_BYTES,
            max_data_bytes: MAX_DATA_BYTES,
        }
    }
}

/// The WAV format of every recording.
pub fn wav_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 2,
        sample_rate: RECORDING_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// One call's recording in progress. See the module docs for the contract.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    /// Blocks to the writer thread; `None` once the recording stopped (dropping it lets the
    /// thread finalize and exit).
    tx: Option<SyncSender<Vec<StereoSample>>>,
    /// Samples not yet a whole block.
    pending: Vec<StereoSample>,
    /// The writer thread; joined by `finish` or when it ended early, detached on drop (it
    /// then finalizes on its own once `tx` is gone).
    thread: Option<JoinHandle<Result<(), RecordingError>>>,
}

impl Recorder {
    /// Creates `<dir>/<call_id>.wav` (and `dir` if missing) and starts its writer thread.
    /// Fails on a call id that is not a safe file name, when the file exists or cannot be
    /// created ([`RecordingError::Create`]), or when no thread can be started. Does a few
    /// small blocking syscalls.
    pub fn start(dir: &Path, call_id: &str) -> Result<Recorder, RecordingError> {
        Self::start_with(dir, call_id, Limits::default())
    }

    pub(super) fn start_with(
        dir: &Path,
        call_id: &str,
        limits: Limits,
    ) -> Result<Recorder, RecordingError> {
        if !is_safe_file_stem(call_id) {
            return Err(RecordingError::InvalidCallId(call_id.to_owned()));
        }
        fs::create_dir_all(dir).map_err(|source| RecordingError::Create {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(format!("{call_id}.wav"));
        let file = File::create_new(&path).map_err(|source| RecordingError::Create {
            path: path.clone(),
            source,
        })?;
        let write_error = |source| RecordingError::Write {
            path: path.clone(),
            source,
        };
        let mut wav =
            hound::WavWriter::new(BufWriter::new(file), wav_spec()).map_err(write_error)?;
        // The header on disk now: a crash before the first periodic flush leaves a valid
        // (empty) WAV rather than an empty file.
        wav.flush().map_err(write_error)?;
        Self::spawn(wav, path, limits)
    }

    /// Starts the writer thread on an open `wav` (a file, or a failing sink in tests).
    pub(super) fn spawn<W>(
        wav: hound::WavWriter<W>,
        path: PathBuf,
        limits: Limits,
    ) -> Result<Recorder, RecordingError>
    where
        W: Write + Seek + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(limits.queue_blocks);
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("recording".into())
            .spawn(move || write_loop(wav, &rx, &thread_path, limits))
            .map_err(RecordingError::Spawn)?;
        Ok(Recorder {
            path,
            tx: Some(tx),
            pending: Vec::with_capacity(BLOCK_SAMPLES),
            thread: Some(thread),
        })
    }

    /// The recording's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether samples are still being recorded (no failure so far).
    pub fn is_recording(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `samples` for the file without blocking. Returns the error that stopped the
    /// recording, once; writes after that are ignored and return `Ok`.
    pub fn write(&mut self, samples: &[StereoSample]) -> Result<(), RecordingError> {
        if self.tx.is_none() {
            return Ok(());
        }
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (BLOCK_SAMPLES - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == BLOCK_SAMPLES {
                let block = std::mem::replace(&mut self.pending, Vec::with_capacity(BLOCK_SAMPLES));
                self.send(block)?;
                if self.tx.is_none() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The error that stopped the recording, if the writer thread has stopped on one since
    /// the last call (a full disk found between writes). Never blocks.
    pub fn poll_error(&mut self) -> Option<RecordingError> {
        if self.tx.is_some() && self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            self.tx = None;
            return self.join().err();
        }
        None
    }

    /// Hands over the last samples, waits for the thread to finalize the file and returns
    /// its path. Returns an error not yet returned by `write` or `poll_error`; after one
    /// was, the file holds what was written before the stop. Blocks: see the module docs.
    pub fn finish(mut self) -> Result<PathBuf, RecordingError> {
        if let Some(tx) = self.tx.take() {
            let block = std::mem::take(&mut self.pending);
            // The thread only hangs up on an error, which `join` returns.
            if !block.is_empty() {
                let _ = tx.send(block);
            }
        }
        self.join()?;
        Ok(self.path)
    }

    fn send(&mut self, block: Vec<StereoSample>) -> Result<(), RecordingError> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        match tx.try_send(block) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.tx = None;
                Err(RecordingError::Lagged)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.tx = None;
                self.join()
            }
        }
    }

    /// Waits for the thread (which has ended or is finishing what is queued) and returns its
    /// outcome; `Ok` when it was joined already.
    fn join(&mut self) -> Result<(), RecordingError> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or(Err(RecordingError::WriterPanicked)),
            None => Ok(()),
        }
    }
}

/// Whether `id` can be a file name as it is: 1 to [`MAX_CALL_ID_LEN`] ASCII letters, digits,
/// `-` or `_` (no separators, no dots, nothing a shell or a filesystem reads specially).
fn is_safe_file_stem(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CALL_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The writer thread: writes blocks until the queue is closed, flushing the header every
/// `flush_every_bytes`, then finalizes. Stops at the first failure.
fn write_loop<W: Write + Seek>(
    mut wav: hound::WavWriter<W>,
    rx: &Receiver<Vec<StereoSample>>,
    path: &Path,
    limits: Limits,
) -> Result<(), RecordingError> {
    let write_error = |source| RecordingError::Write {
        path: path.to_owned(),
        source,
    };
    let mut written: u64 = 0;
    let mut since_flush: u64 = 0;
    while let Ok(block) = rx.recv() {
        let room = limits.max_data_bytes.saturating_sub(written) / BYTES_PER_SAMPLE;
        let take = block.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        for &[left, right] in &block[..take] {
            wav.write_sample(left).map_err(write_error)?;
            wav.write_sample(right).map_err(write_error)?;
        }
        let bytes = take as u64 * BYTES_PER_SAMPLE;
        written += bytes;
        since_flush += bytes;
        if take < block.len() {
            wav.finalize().map_err(write_error)?;
            return Err(RecordingError::TooLong);
        }
        if since_flush >= limits.flush_every_bytes {
            wav.flush().map_err(write_error)?;
            since_flush = 0;
        }
    }
    wav.finalize().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fault::Fault;

    fn samples(n: usize, seed: i16) -> Vec<StereoSample> {
        (0..n)
            .map(|i| {
                let v = (i as i16).wrapping_mul(7).wrapping_add(seed);
                [v, v.wrapping_neg()]
            })
            .collect()
    }

    fn read_wav(path: &Path) -> (hound::WavSpec, Vec<StereoSample>) {
        let mut reader = hound::WavReader::open(path).unwrap();
        let spec = reader.spec();
        let flat: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        (spec, flat.chunks_exact(2).map(|c| [c[0], c[1]]).collect())
    }

    #[test]
    fn start_leaves_a_valid_empty_wav_then_finish_holds_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::start(dir.path(), "c0ffee").unwrap();
        assert_eq!(rec.path(), dir.path().join("c0ffee.wav"));
        let (spec, got) = read_wav(rec.path());
        assert_eq!(spec, wav_spec());
        assert!(got.is_empty(), "the header is on disk before any sample");

        // 1.05 s in writes of odd sizes, so blocks and writes do not line up.
        let all = samples(16_800, 3);
        for chunk in all.chunks(37) {
            rec.write(chunk).unwrap();
        }
        assert!(rec.is_recording());
        assert_eq!(rec.poll_error().map(|e| e.to_string()), None);
        let path = rec.finish().unwrap();
        let (spec, got) = read_wav(&path);
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (2, 16_000, 16)
        );
        assert_eq!(got, all);
    }

    #[test]
    fn refuses_an_existing_recording_and_unsafe_ids() {
        let dir = tempfile::tempdir().unwrap();
        let first = Recorder::start(dir.path(), "abc").unwrap();
        let err = Recorder::start(dir.path(), "abc").unwrap_err();
        assert!(
            matches!(&err, RecordingError::Create { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{err}"
        );
        assert_eq!(err.fault(), Fault::Config);
        first.finish().unwrap();
        let long = "a".repeat(MAX_CALL_ID_LEN + 1);
        for id in ["", "../etc", "a/b", "a.b", "x y", long.as_str(), "é"] {
            let err = Recorder::start(dir.path(), id).unwrap_err();
            assert!(matches!(err, RecordingError::InvalidCallId(_)), "{id:?}");
            assert_eq!(err.fault(), Fault::Internal);
        }
        assert!(Recorder::start(dir.path(), &"a".repeat(MAX_CALL_ID_LEN)).is_ok());
    }

    #[test]
    fn an_uncreatable_directory_is_the_operators() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = Recorder::start(&file, "abc").unwrap_err();
        assert!(matches!(err, RecordingError::Create { .. }), "{err}");
        assert_eq!(err.fault(), Fault::Config);
    }

    /// A sink that fails every write after `room` bytes, as a full disk does.
    struct FullDisk {
        inner: Cursor<Vec<u8>>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.inner.get_ref().len() + buf.len() > self.room {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    /// Writes 20 ms blocks until the recording stops; returns every error seen, `finish`'s
    /// included.
    fn write_until_stopped(mut rec: Recorder) -> Vec<RecordingError> {
        let mut errors = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let block = samples(320, 1);
        while rec.is_recording() && Instant::now() < deadline {
            if let Err(e) = rec.write(&block) {
                errors.push(e);
            }
            errors.extend(rec.poll_error());
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..3 {
            rec.write(&block).unwrap(); // ignored once stopped
        }
        if let Err(e) = rec.finish() {
            errors.push(e);
        }
        errors
    }

    #[test]
    fn a_full_disk_stops_the_recording_with_one_error() {
        let sink = BufWriter::new(FullDisk {
            inner: Cursor::new(Vec::new()),
            room: 100_000,
        });
        let wav = hound::WavWriter::new(sink, wav_spec()).unwrap();
        let rec = Recorder::spawn(wav, PathBuf::from("full.wav"), Limits::default()).unwrap();
        let errors = write_until_stopped(rec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let RecordingError::Write { source, .. } = &errors[0] else {
            panic!("{:?}", errors[0]);
        };
        assert!(
            matches!(source, hound::Error::IoError(e) if e.kind() == io::ErrorKind::StorageFull)
        );
        assert_eq!(errors[0].fault(), Fault::Config);
    }

    /// A sink whose writes wait until the gate opens: a stalled disk.
    struct Stalled {
        inner: Cursor<Vec<u8>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, cv) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Stalled {
        fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn a_stalled_disk_stops_the_recording_without_blocking_the_call() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = BufWriter::new(Stalled {
            inner: Cursor::new(Vec::new()),
            gate: Arc::clone(&gate),
        });
        let wav = hound::WavWriter::new(sink, wav_spec()).unwrap();
        let limits = Limits {
            queue_blocks: 2,
            ..Limits::default()
        };
        let mut rec = Recorder::spawn(wav, PathBuf::from("slow.wav"), limits).unwrap();
        let block = samples(BLOCK_SAMPLES, 0);
        let started = Instant::now();
        let mut lagged = false;
        for _ in 0..100 {
            match rec.write(&block) {
                Ok(()) => {}
                Err(RecordingError::Lagged) => {
                    lagged = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(lagged, "the queue filled");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "writes never wait"
        );
        assert!(!rec.is_recording());
        assert!(rec.write(&block).is_ok(), "reported once");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert!(rec.finish().is_ok(), "what was queued is finalized");
    }

    #[test]
    fn the_wav_size_limit_ends_the_recording_with_a_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_data_bytes: 1_000 * BYTES_PER_SAMPLE,
            ..Limits::default()
        };
        let rec = Recorder::start_with(dir.path(), "long", limits).unwrap();
        let path = rec.path().to_owned();
        let errors = write_until_stopped(rec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(errors[0], RecordingError::TooLong));
        let (_, got) = read_wav(&path);
        assert_eq!(got.len(), 1_000);
    }

    #[test]
    fn the_header_is_rewritten_while_recording() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::start(dir.path(), "live").unwrap();
        // 2.5 s: at least two periodic header rewrites.
        for chunk in samples(40_000, 5).chunks(640) {
            rec.write(chunk).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut declared = 0;
        while declared < 2 * FLUSH_EVERY_BYTES && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            let reader = hound::WavReader::open(rec.path()).unwrap();
            declared = u64::from(reader.len()) * 2;
        }
        assert!(
            declared >= 2 * FLUSH_EVERY_BYTES,
            "header says {declared} bytes"
        );
        rec.finish().unwrap();
    }
}
