//! Where the header bytes come from: a byte slice, or a file read in chunks.
//!
//! The reader asks for a window of bytes at a position; it checks every
//! length against [`Source::size`] before asking, so a source never has to
//! hand out more than the data holds, and a file source never allocates more
//! than the file's size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Mutex;

/// Random access to the bytes of a GGUF header.
pub trait Source {
    /// How many bytes the data holds.
    fn size(&self) -> u64;

    /// The bytes from `pos` on, at least `min` of them (the caller checked
    /// that `pos + min <= len()`); more when they are at hand.
    fn window(&mut self, pos: u64, min: usize) -> io::Result<&[u8]>;
}

fn short_read() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the data ended while it was being read",
    )
}

/// A complete or truncated copy of the header in memory.
pub struct SliceSource<'a> {
    data: &'a [u8],
}

impl<'a> SliceSource<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        SliceSource { data }
    }
}

impl Source for SliceSource<'_> {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    #[inline]
    fn window(&mut self, pos: u64, min: usize) -> io::Result<&[u8]> {
        let rest = usize::try_from(pos)
            .ok()
            .and_then(|p| self.data.get(p..))
            .ok_or_else(short_read)?;
        if rest.len() < min {
            return Err(short_read());
        }
        Ok(rest)
    }
}

/// Bytes read per refill: big enough that syscalls are rare, small enough
/// to stay in L2 cache and to skip (not read) big numeric arrays.
const CHUNK: usize = 256 * 1024;

/// A file read through one reusable buffer: a window moves forward with the
/// reader, and whatever it seeks past (numeric arrays, long strings) is never
/// read at all.
pub struct FileSource {
    file: File,
    len: u64,
    buf: Vec<u8>,
    start: u64,
    filled: usize,
}

/// One chunk buffer kept between scans, so that a scan does not pay for
/// fresh pages (page faults, zeroing); concurrent scans allocate their own.
static SPARE_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

impl FileSource {
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let buf = SPARE_BUFFER
            .try_lock()
            .map(|mut spare| std::mem::take(&mut *spare))
            .unwrap_or_default();
        Ok(FileSource {
            file,
            len,
            buf,
            start: 0,
            filled: 0,
        })
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        if self.buf.len() == CHUNK {
            if let Ok(mut spare) = SPARE_BUFFER.try_lock() {
                *spare = std::mem::take(&mut self.buf);
            }
        }
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.len
    }

    fn window(&mut self, pos: u64, min: usize) -> io::Result<&[u8]> {
        let cached = pos
            .checked_sub(self.start)
            .and_then(|off| usize::try_from(off).ok())
            .filter(|&off| off.checked_add(min).is_some_and(|end| end <= self.filled));
        let off = match cached {
            Some(off) => off,
            None => {
                // Read from `pos`: at least `min` bytes, a chunk when the
                // file has one left. `min` was checked against the file
                // size, so the buffer never grows past the file.
                let left = self.len.saturating_sub(pos);
                let want = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(CHUNK.max(min));
                if want < min {
                    return Err(short_read());
                }
                if self.buf.len() < want {
                    self.buf = Vec::new();
                    self.buf
                        .try_reserve_exact(want)
                        .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
                    self.buf.resize(want, 0);
                }
                let dst = self.buf.get_mut(..want).ok_or_else(short_read)?;
                self.filled = 0;
                self.file.seek(SeekFrom::Start(pos))?;
                self.file.read_exact(dst)?;
                self.start = pos;
                self.filled = want;
                0
            }
        };
        self.buf.get(off..self.filled).ok_or_else(short_read)
    }
}
