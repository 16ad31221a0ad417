//! Repairs recordings a crash left unfinished: their header's sizes are stale (from the last
//! periodic flush) or zero, so readers would stop early or refuse the file.
//!
//! ## Contract
//!
//! - A file is **intact**, and left untouched, when its RIFF size is its length − 8 and its
//!   `data` chunk fits in the file in whole sample frames.
//! - Otherwise, for a WAV whose `data` chunk is the last (as every recording's is), the data
//!   size becomes the bytes after the chunk's header, cut to whole sample frames (a trailing
//!   partial frame is truncated from the file), and the RIFF size follows. The header is then
//!   synced to disk.
//! - Anything else (no RIFF/WAVE header, no `fmt ` chunk before `data`, sizes that run past
//!   the file, a file too large for a WAV) is [`RecordingError::NotWav`] and left untouched.
//!   Nothing here panics on a file's content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::RecordingError;

/// Chunks read before giving up on finding `data` (a recording has one, `fmt `; other
/// writers add a few such as `LIST` or `fact`). Bounds the work a garbage file can cause.
pub const MAX_CHUNKS_BEFORE_DATA: usize = 16;
/// Offset of the RIFF size field.
const RIFF_SIZE_OFFSET: u64 = 4;
/// Bytes of the RIFF header: `RIFF`, size, `WAVE`.
const RIFF_HEADER_BYTES: u64 = 12;
/// Bytes of a chunk header: id and size.
const CHUNK_HEADER_BYTES: u64 = 8;
/// Bytes of the `fmt ` fields read: format tag, channels, rate, byte rate, block align, bits.
const FMT_MIN_BYTES: u32 = 16;

/// What [`repair_file`] did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Its header matched its length: not touched.
    Intact,
    /// Its sizes were rewritten from its length.
    Repaired {
        /// The data chunk's size now, in bytes.
        data_bytes: u32,
        /// Bytes of a trailing partial sample frame cut from the end of the file.
        truncated_bytes: u64,
    },
}

/// One file [`repair_dir`] looked at, and what became of it.
pub type RepairReport = (PathBuf, Result<RepairOutcome, RecordingError>);

/// Where a WAV's `data` chunk is and what its header says.
#[derive(Debug, Clone, Copy)]
struct Layout {
    riff_size: u32,
    /// Offset of the data chunk's size field.
    data_size_offset: u64,
    /// Offset of the first data byte.
    data_start: u64,
    data_size: u32,
    /// Bytes per sample frame (all channels).
    block_align: u16,
}

/// Repairs every `*.wav` regular file directly in `dir` (symbolic links are not followed), as
/// [`repair_file`] does, in path order, returning each file's outcome. A missing `dir` has
/// nothing to repair. Fails only when `dir` cannot be listed. Blocking: call it at start,
/// before calls are admitted.
pub fn repair_dir(dir: &Path) -> Result<Vec<RepairReport>, RecordingError> {
    let list_error = |source| RecordingError::ListDir {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_error(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_error)?;
        let is_file = entry.file_type().map_err(list_error)?.is_file();
        let path = entry.path();
        let is_wav = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("wav"));
        if is_file && is_wav {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let outcome = repair_file(&path);
            (path, outcome)
        })
        .collect())
}

/// Checks one WAV and rewrites its sizes if a crash left them stale; see the module docs.
/// An intact file is only read.
pub fn repair_file(path: &Path) -> Result<RepairOutcome, RecordingError> {
    let io_error = |source| RecordingError::Repair {
        path: path.to_owned(),
        source,
    };
    let not_wav = |reason| RecordingError::NotWav {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    let layout = read_layout(&mut file, len)
        .map_err(io_error)?
        .map_err(not_wav)?;
    drop(file);

    let block_align = u64::from(layout.block_align);
    let available = len - layout.data_start;
    let declared = u64::from(layout.data_size);
    if u64::from(layout.riff_size) + 8 == len
        && declared <= available
        && declared.is_multiple_of(block_align)
    {
        return Ok(RepairOutcome::Intact);
    }
    let whole = available - available % block_align;
    let new_len = layout.data_start + whole;
    let (Ok(data_bytes), Ok(riff_size)) = (u32::try_from(whole), u32::try_from(new_len - 8)) else {
        return Err(not_wav("larger than a WAV header can describe"));
    };

    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error)?;
    if new_len < len {
        file.set_len(new_len).map_err(io_error)?;
    }
    write_u32_at(&mut file, RIFF_SIZE_OFFSET, riff_size).map_err(io_error)?;
    write_u32_at(&mut file, layout.data_size_offset, data_bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    Ok(RepairOutcome::Repaired {
        data_bytes,
        truncated_bytes: len - new_len,
    })
}

/// Walks the chunks of a file of `len` bytes up to `data`. The outer error is I/O, the inner
/// why it is not a WAV this module repairs.
fn read_layout<R: Read + Seek>(file: &mut R, len: u64) -> io::Result<Result<Layout, &'static str>> {
    if len < RIFF_HEADER_BYTES + CHUNK_HEADER_BYTES {
        return Ok(Err("too short for a WAV header"));
    }
    let mut riff = [0u8; RIFF_HEADER_BYTES as usize];
    file.read_exact(&mut riff)?;
    if &riff[0..4] != b"RIFF" || &riff[8..12] != b"WAVE" {
        return Ok(Err("no RIFF/WAVE header"));
    }
    let riff_size = le_u32(&riff[4..8]);
    let mut block_align = None;
    let mut pos = RIFF_HEADER_BYTES;
    for _ in 0..MAX_CHUNKS_BEFORE_DATA {
        if pos + CHUNK_HEADER_BYTES > len {
            return Ok(Err("no data chunk"));
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut header = [0u8; CHUNK_HEADER_BYTES as usize];
        file.read_exact(&mut header)?;
        let size = le_u32(&header[4..8]);
        match &header[0..4] {
            b"data" => {
                let Some(block_align) = block_align else {
                    return Ok(Err("no fmt chunk before the data chunk"));
                };
                return Ok(Ok(Layout {
                    riff_size,
                    data_size_offset: pos + 4,
                    data_start: pos + CHUNK_HEADER_BYTES,
                    data_size: size,
                    block_align,
                }));
            }
            b"fmt " => {
                if size < FMT_MIN_BYTES || pos + CHUNK_HEADER_BYTES + u64::from(size) > len {
                    return Ok(Err("malformed fmt chunk"));
                }
                let mut fmt = [0u8; FMT_MIN_BYTES as usize];
                file.read_exact(&mut fmt)?;
                let align = u16::from_le_bytes([fmt[12], fmt[13]]);
                if align == 0 {
                    return Ok(Err("zero block alignment"));
                }
                block_align = Some(align);
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos += CHUNK_HEADER_BYTES + u64::from(size) + u64::from(size & 1);
    }
    Ok(Err("no data chunk among the first chunks"))
}

/// A little-endian `u32` from the first four bytes of `bytes` (0 if there are fewer).
fn le_u32(bytes: &[u8]) -> u32 {
    bytes
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

fn write_u32_at(file: &mut File, offset: u64, value: u32) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&value.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::fault::Fault;
    use crate::recording::writer::wav_spec;

    /// Offset of the data size in hound's 16-bit stereo header (44 bytes in all).
    const DATA_SIZE_OFFSET: u64 = 40;

    fn write_wav(path: &Path, frames: usize) -> Vec<i16> {
        let samples: Vec<i16> = (0..frames * 2)
            .map(|i| (i as i16).wrapping_mul(13))
            .collect();
        let mut wav = hound::WavWriter::create(path, wav_spec()).unwrap();
        for &s in &samples {
            wav.write_sample(s).unwrap();
        }
        wav.finalize().unwrap();
        samples
    }

    fn set_u32(path: &Path, offset: u64, value: u32) {
        let mut file = OpenOptions::new().write(true).open(path).unwrap();
        write_u32_at(&mut file, offset, value).unwrap();
    }

    fn read_samples(path: &Path) -> Vec<i16> {
        hound::WavReader::open(path)
            .unwrap()
            .samples::<i16>()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn zeroed_sizes_are_rebuilt_from_the_file_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples = write_wav(&path, 1_000);
        set_u32(&path, RIFF_SIZE_OFFSET, 0);
        set_u32(&path, DATA_SIZE_OFFSET, 0);
        assert_eq!(
            hound::WavReader::open(&path).unwrap().len(),
            0,
            "as a crash leaves it"
        );
        assert_eq!(
            repair_file(&path).unwrap(),
            RepairOutcome::Repaired {
                data_bytes: 4_000,
                truncated_bytes: 0
            }
        );
        assert_eq!(read_samples(&path), samples);
        assert_eq!(repair_file(&path).unwrap(), RepairOutcome::Intact);
    }

    #[test]
    fn a_partial_last_frame_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples = write_wav(&path, 1_000);
        set_u32(&path, RIFF_SIZE_OFFSET, 0);
        set_u32(&path, DATA_SIZE_OFFSET, 0);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(44 + 4_000 - 3).unwrap(); // the crash cut the last frame mid-sample
        assert_eq!(
            repair_file(&path).unwrap(),
            RepairOutcome::Repaired {
                data_bytes: 3_996,
                truncated_bytes: 1
            }
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 44 + 3_996);
        assert_eq!(read_samples(&path), samples[..1_998]);
    }

    #[test]
    fn stale_sizes_from_an_earlier_flush_are_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples = write_wav(&path, 1_000);
        set_u32(&path, RIFF_SIZE_OFFSET, 36 + 2_000);
        set_u32(&path, DATA_SIZE_OFFSET, 2_000);
        assert!(matches!(
            repair_file(&path).unwrap(),
            RepairOutcome::Repaired {
                data_bytes: 4_000,
                ..
            }
        ));
        assert_eq!(read_samples(&path), samples);
    }

    #[test]
    fn a_header_only_file_becomes_an_empty_wav() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        write_wav(&path, 0);
        set_u32(&path, RIFF_SIZE_OFFSET, 0); // as hound writes it before the first flush
        assert!(matches!(
            repair_file(&path).unwrap(),
            RepairOutcome::Repaired { data_bytes: 0, .. }
        ));
        assert!(read_samples(&path).is_empty());
    }

    #[test]
    fn an_intact_file_is_only_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        write_wav(&path, 500);
        let before = fs::read(&path).unwrap();
        let mut perms = fs::metadata(&path).unwrap().permissions();
        perms.set_readonly(true);
        fs::set_permissions(&path, perms).unwrap();
        assert_eq!(repair_file(&path).unwrap(), RepairOutcome::Intact);
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn files_that_are_not_wavs_are_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>); 5] = [
            (
                "garbage",
                b"this is not a wav file at all, but it is long enough".to_vec(),
            ),
            ("short", b"RIFF\0\0\0\0WAVE".to_vec()),
            ("empty", Vec::new()),
            (
                "no-fmt",
                [b"RIFF\0\0\0\0WAVEdata\0\0\0\0".as_slice(), &[0; 64]].concat(),
            ),
            (
                "huge-chunk",
                [b"RIFF\0\0\0\0WAVELIST\xff\xff\xff\xff".as_slice(), &[0; 64]].concat(),
            ),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(format!("{name}.wav"));
            fs::write(&path, &bytes).unwrap();
            let err = repair_file(&path).unwrap_err();
            assert!(
                matches!(err, RecordingError::NotWav { .. }),
                "{name}: {err}"
            );
            assert_eq!(err.fault(), Fault::Config);
            assert_eq!(fs::read(&path).unwrap(), bytes, "{name} untouched");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.wav");
        for _ in 0..500 {
            let len = rng.random_range(0..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.7) && bytes.len() >= 12 {
                bytes[..4].copy_from_slice(b"RIFF");
                bytes[8..12].copy_from_slice(b"WAVE");
                if rng.random_bool(0.5) && bytes.len() >= 44 {
                    bytes[12..16].copy_from_slice(b"fmt ");
                    bytes[16..20].copy_from_slice(&16u32.to_le_bytes());
                    bytes[36..40].copy_from_slice(b"data");
                }
            }
            fs::write(&path, &bytes).unwrap();
            let _ = repair_file(&path);
        }
    }

    #[test]
    fn repair_dir_repairs_wavs_only_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = dir.path().join("a.wav");
        let samples = write_wav(&crashed, 100);
        set_u32(&crashed, RIFF_SIZE_OFFSET, 0);
        set_u32(&crashed, DATA_SIZE_OFFSET, 0);
        write_wav(&dir.path().join("b.WAV"), 10);
        fs::write(dir.path().join("c.txt"), b"not looked at").unwrap();
        fs::write(dir.path().join("d.wav"), b"garbage").unwrap();
        fs::create_dir(dir.path().join("e.wav")).unwrap();

        let report = repair_dir(dir.path()).unwrap();
        let names: Vec<_> = report
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.wav", "b.WAV", "d.wav"]);
        assert!(matches!(
            report[0].1,
            Ok(RepairOutcome::Repaired {
                data_bytes: 400,
                ..
            })
        ));
        assert!(matches!(report[1].1, Ok(RepairOutcome::Intact)));
        assert!(matches!(report[2].1, Err(RecordingError::NotWav { .. })));
        assert_eq!(read_samples(&crashed), samples);

        assert!(repair_dir(&dir.path().join("missing")).unwrap().is_empty());
    }
}
