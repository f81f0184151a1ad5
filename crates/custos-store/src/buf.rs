//! Page-aligned chunk buffers, so a volume can move chunk bytes with direct
//! I/O (no page cache, no extra copy) without any unsafe code: the buffer is
//! a `Vec<u8>` with room to spare, used from its first page-aligned byte.

/// Alignment direct I/O needs for memory, offsets and lengths.
pub const ALIGN: usize = 4096;

/// A reusable, page-aligned byte buffer.
pub struct ChunkBuf {
    raw: Vec<u8>,
    off: usize,
    cap: usize,
}

impl ChunkBuf {
    /// A zeroed buffer of at least `cap` bytes (rounded up to [`ALIGN`]).
    pub fn new(cap: usize) -> Self {
        let cap = cap.div_ceil(ALIGN) * ALIGN;
        let raw = vec![0u8; cap + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        assert!(off < ALIGN, "a byte buffer can always be aligned within one page");
        Self { raw, off, cap }
    }

    /// Usable bytes (a multiple of [`ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The first `len` bytes, starting on a page boundary.
    pub fn slice(&self, len: usize) -> &[u8] {
        &self.raw[self.off..self.off + len]
    }

    /// The first `len` bytes, mutable, starting on a page boundary.
    pub fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.off..self.off + len]
    }

    /// Make room for at least `cap` bytes (contents are not kept).
    pub fn ensure(&mut self, cap: usize) {
        if cap > self.cap {
            *self = Self::new(cap);
        }
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBuf({} bytes)", self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        for n in [1, 4095, 4096, 1 << 20, (1 << 20) + 40] {
            let mut b = ChunkBuf::new(n);
            assert!(b.capacity() >= n && b.capacity().is_multiple_of(ALIGN));
            assert!((b.slice_mut(n).as_ptr() as usize).is_multiple_of(ALIGN));
            b.slice_mut(n)[n - 1] = 7;
            assert_eq!(b.slice(n)[n - 1], 7);
        }
        let mut b = ChunkBuf::new(10);
        b.ensure(10_000);
        assert!(b.capacity() >= 10_000);
        assert!((b.slice(10).as_ptr() as usize).is_multiple_of(ALIGN));
    }
}
