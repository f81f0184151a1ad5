//! A file writer that uses direct I/O for the page-aligned bulk of what it
//! writes, through one reused aligned staging buffer, and the page cache for
//! the unaligned tail. Writing a large output this way costs no page-cache
//! allocation, which on some virtual machines is slower than the disk.

use std::fs::File;
use std::io::{self, Write};

use rustix::fs::OFlags;

use crate::{PooledBuf, ALIGN};

const STAGE: usize = 8 << 20;

pub struct DirectWriter {
    file: File,
    /// From the process's pool: an export writes many files one after
    /// another, and a fresh 8 MiB buffer each time costs its page faults.
    stage: PooledBuf,
    len: usize,
    direct: bool,
}

impl DirectWriter {
    /// Wrap a file opened for writing at offset 0. Falls back to ordinary
    /// writes where the filesystem refuses O_DIRECT.
    pub fn new(file: File) -> Self {
        let direct =
            rustix::fs::fcntl_getfl(&file).and_then(|fl| rustix::fs::fcntl_setfl(&file, fl | OFlags::DIRECT)).is_ok();
        Self { file, stage: PooledBuf::take(STAGE), len: 0, direct }
    }

    fn flush_aligned(&mut self) -> io::Result<()> {
        let aligned = self.len / ALIGN * ALIGN;
        if aligned > 0 {
            if let Err(e) = self.file.write_all(self.stage.slice(aligned)) {
                // Some filesystems accept the flag but refuse the write.
                if !self.direct || e.raw_os_error() != Some(rustix::io::Errno::INVAL.raw_os_error()) {
                    return Err(e);
                }
                self.buffered()?;
                self.file.write_all(self.stage.slice(aligned))?;
            }
            let rest = self.len - aligned;
            let tail = self.stage.slice(self.len)[aligned..].to_vec();
            self.stage.slice_mut(rest).copy_from_slice(&tail);
            self.len = rest;
        }
        Ok(())
    }

    fn buffered(&mut self) -> io::Result<()> {
        if self.direct {
            let fl = rustix::fs::fcntl_getfl(&self.file)?;
            rustix::fs::fcntl_setfl(&self.file, fl - OFlags::DIRECT)?;
            self.direct = false;
        }
        Ok(())
    }

    /// Write what is staged (the unaligned tail through the page cache) and
    /// return the file.
    pub fn finish(mut self) -> io::Result<File> {
        self.flush_aligned()?;
        self.buffered()?;
        let len = self.len;
        self.file.write_all(self.stage.slice(len))?;
        self.len = 0;
        Ok(self.file)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(STAGE - self.len);
        let start = self.len;
        self.stage.slice_mut(start + n)[start..].copy_from_slice(&buf[..n]);
        self.len += n;
        if self.len == STAGE {
            self.flush_aligned()?;
        }
        Ok(n)
    }

    /// Writes out whole pages; the unaligned rest waits for more data or
    /// [`DirectWriter::finish`].
    fn flush(&mut self) -> io::Result<()> {
        self.flush_aligned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, STAGE - 1, STAGE, STAGE + 12345, 3 * STAGE + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            let mut w = DirectWriter::new(File::create(&p).unwrap());
            // Odd-sized pieces, with flushes in between.
            for (i, piece) in data.chunks(1_000_003).enumerate() {
                w.write_all(piece).unwrap();
                if i % 2 == 1 {
                    w.flush().unwrap();
                }
            }
            w.finish().unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), data, "length {len}");
        }
    }
}
