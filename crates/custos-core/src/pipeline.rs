//! The two hot loops, both streaming with a fixed pool of chunk buffers so
//! memory does not grow with data size:
//!
//! * [`seal_stream`]: one reader fills buffers in order; worker threads
//!   fingerprint, compress (when it pays), seal and store each chunk (or
//!   reuse the previous generation's chunk at the same position when its
//!   fingerprint matches).
//! * [`open_stream`]: a dispatcher hands chunk positions to workers, which
//!   read and open them in place; the caller's thread writes them out in
//!   order from a small reorder window.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{bounded, unbounded};
use custos_crypto::{DataKey, Fingerprinter};
use custos_model::{ChunkId, ChunkRef, DatasetId};
use custos_store::format::{
    compress, compress_bound, open_chunk, open_chunk_body, seal_chunk, Codec, FormatError, Opened, CHUNK_OVERHEAD,
    HEADER_LEN,
};
use custos_store::{ChunkBuf, PooledBuf, StoreError, Volume};

use crate::ChunkProblem;

/// Worker threads by default: one per core, and at least four, because a
/// worker spends part of each chunk blocked on direct I/O; more writes in
/// flight keep the device busy (measured: 1 GiB put 0.57-0.74 s with 2
/// workers, 0.56-0.63 s with 4, on 2 cores).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(4)
}

fn buffers_for(threads: usize) -> usize {
    threads * 2 + 2
}

pub(crate) struct SealJob<'a> {
    pub key: &'a DataKey,
    pub dataset: DatasetId,
    pub volume: &'a dyn Volume,
    pub chunk_size: usize,
    /// The previous generation's chunks, if they are on the same volume under the same key.
    pub previous: &'a [ChunkRef],
    pub threads: usize,
    /// Compress chunks with LZ4 where that saves space.
    pub compress: bool,
}

pub(crate) enum SealError {
    Input(std::io::Error),
    Store(StoreError),
    Format(FormatError),
}

pub(crate) struct SealOutcome {
    pub result: Result<Vec<ChunkRef>, SealError>,
    /// Chunks this run stored (to delete again if the run fails).
    pub written: Vec<ChunkId>,
    /// Bytes of the sealed objects this run stored (after compression).
    pub stored: u64,
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read `input` to its end, sealing and storing it chunk by chunk.
pub(crate) fn seal_stream(job: &SealJob<'_>, input: &mut dyn Read) -> SealOutcome {
    let fp = Fingerprinter::new(job.key);
    if job.threads <= 1 {
        return seal_inline(job, &fp, input);
    }
    let nbuf = buffers_for(job.threads);
    let (free_tx, free_rx) = bounded::<PooledBuf>(nbuf);
    for _ in 0..nbuf {
        free_tx.send(PooledBuf::take(job.chunk_size + CHUNK_OVERHEAD)).expect("pool has room");
    }
    let (work_tx, work_rx) = bounded::<(u64, PooledBuf, usize)>(job.threads);
    let (done_tx, done_rx) = unbounded::<(u64, ChunkRef, bool)>();
    let abort = AtomicBool::new(false);
    let stored = AtomicU64::new(0);
    let first_error: Mutex<Option<SealError>> = Mutex::new(None);
    let fail = |e: SealError| {
        abort.store(true, Ordering::SeqCst);
        first_error.lock().expect("error slot").get_or_insert(e);
    };

    std::thread::scope(|s| {
        for _ in 0..job.threads {
            let (work_rx, free_tx, done_tx) = (work_rx.clone(), free_tx.clone(), done_tx.clone());
            let (fp, fail, abort, stored) = (&fp, &fail, &abort, &stored);
            s.spawn(move || {
                // Where a chunk is compressed before it is sealed.
                let mut packed = if job.compress {
                    Some(PooledBuf::take(compress_bound(job.chunk_size) + CHUNK_OVERHEAD))
                } else {
                    None
                };
                for (index, mut buf, n) in work_rx {
                    if !abort.load(Ordering::Relaxed) {
                        match seal_one(job, fp, index, &mut buf, n, packed.as_mut(), stored) {
                            Ok((c, new)) => done_tx.send((index, c, new)).expect("collector alive"),
                            Err(e) => fail(e),
                        }
                    }
                    let _ = free_tx.send(buf);
                }
            });
        }
        drop(done_tx);
        let mut index = 0u64;
        while !abort.load(Ordering::Relaxed) {
            let mut buf = free_rx.recv().expect("workers return buffers");
            match read_full(input, &mut buf.slice_mut(HEADER_LEN + job.chunk_size)[HEADER_LEN..]) {
                Ok(0) => break,
                Ok(n) => {
                    work_tx.send((index, buf, n)).expect("workers alive");
                    index += 1;
                    if n < job.chunk_size {
                        break;
                    }
                }
                Err(e) => fail(SealError::Input(e)),
            }
        }
        drop(work_tx);
    });

    let mut chunks: Vec<Option<ChunkRef>> = Vec::new();
    let mut written = Vec::new();
    for (index, c, new) in done_rx {
        if new {
            written.push(c.id);
        }
        let i = index as usize;
        if chunks.len() <= i {
            chunks.resize(i + 1, None);
        }
        chunks[i] = Some(c);
    }
    let result = match first_error.into_inner().expect("error slot") {
        Some(e) => Err(e),
        None => Ok(chunks.into_iter().map(|c| c.expect("every dispatched chunk reported")).collect()),
    };
    SealOutcome { result, written, stored: stored.into_inner() }
}

/// [`seal_stream`] on the caller's thread alone: for a small input (or
/// one of many written side by side by the caller's own workers), where
/// starting threads would cost more than the sealing.
fn seal_inline(job: &SealJob<'_>, fp: &Fingerprinter, input: &mut dyn Read) -> SealOutcome {
    let stored = AtomicU64::new(0);
    let mut buf = PooledBuf::take(job.chunk_size + CHUNK_OVERHEAD);
    let mut packed =
        if job.compress { Some(PooledBuf::take(compress_bound(job.chunk_size) + CHUNK_OVERHEAD)) } else { None };
    let (mut chunks, mut written) = (Vec::new(), Vec::new());
    let mut index = 0u64;
    let result = loop {
        let n = match read_full(input, &mut buf.slice_mut(HEADER_LEN + job.chunk_size)[HEADER_LEN..]) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(SealError::Input(e)),
        };
        match seal_one(job, fp, index, &mut buf, n, packed.as_mut(), &stored) {
            Ok((c, new)) => {
                if new {
                    written.push(c.id);
                }
                chunks.push(c);
            }
            Err(e) => break Err(e),
        }
        index += 1;
        if n < job.chunk_size {
            break Ok(());
        }
    };
    SealOutcome { result: result.map(|()| chunks), written, stored: stored.into_inner() }
}

/// Fingerprint chunk `index` (the `n` bytes after the header room in
/// `buf`) and reuse the previous generation's chunk at that position when
/// it matches; otherwise compress (into `packed`, when it pays), seal and
/// store it. Returns the chunk and whether it was stored now.
fn seal_one(
    job: &SealJob<'_>,
    fp: &Fingerprinter,
    index: u64,
    buf: &mut PooledBuf,
    n: usize,
    packed: Option<&mut PooledBuf>,
    stored: &AtomicU64,
) -> Result<(ChunkRef, bool), SealError> {
    let plain = &buf.slice(HEADER_LEN + n)[HEADER_LEN..];
    let fingerprint = fp.fingerprint(plain);
    let reuse = job.previous.get(index as usize).filter(|p| p.len as usize == n && p.fingerprint == fingerprint);
    let res = match reuse {
        Some(p) => Ok((*p, false)),
        None => {
            // Random, or one that names the pack the chunk goes into.
            let id = job.volume.new_chunk_id();
            let plain = &buf.slice(HEADER_LEN + n)[HEADER_LEN..];
            let compressed = packed.and_then(|p| {
                let cap = p.capacity();
                compress(plain, &mut p.slice_mut(cap)[HEADER_LEN..]).map(|len| (p, len))
            });
            let (codec, sealed) = match compressed {
                Some((p, len)) => (Codec::Lz4, p.slice_mut(len + CHUNK_OVERHEAD)),
                None => (Codec::Stored, buf.slice_mut(n + CHUNK_OVERHEAD)),
            };
            seal_chunk(job.key, &job.dataset, &id, index, codec, sealed)
                .map_err(SealError::Format)
                .and_then(|_| job.volume.put_chunk(&id, sealed).map_err(SealError::Store))
                .map(|_| {
                    stored.fetch_add(sealed.len() as u64, Ordering::Relaxed);
                    (ChunkRef { id, len: n as u32, fingerprint }, true)
                })
        }
    };
    if res.is_ok() {
        crate::progress::add(n as u64);
    }
    res
}

pub(crate) struct OpenJob<'a> {
    pub key: &'a DataKey,
    pub dataset: DatasetId,
    pub volume: &'a dyn Volume,
    pub chunks: &'a [ChunkRef],
    pub chunk_size: u64,
    pub threads: usize,
}

pub(crate) enum OpenError {
    Chunk { index: u64, id: ChunkId, problem: ChunkProblem },
    Store(StoreError),
    Output(std::io::Error),
}

/// Write bytes `start..end` of the dataset to `out`, opening only the
/// chunks that cover them.
pub(crate) fn open_stream(job: &OpenJob<'_>, start: u64, end: u64, out: &mut dyn Write) -> Result<(), OpenError> {
    if start >= end {
        return Ok(());
    }
    let cs = job.chunk_size;
    let (first, last) = (start / cs, (end - 1) / cs);
    if job.threads <= 1 {
        return open_inline(job, start, end, out);
    }
    let nbuf = buffers_for(job.threads);
    let (free_tx, free_rx) = bounded::<PooledBuf>(nbuf);
    for _ in 0..nbuf {
        free_tx.send(PooledBuf::take(cs as usize + CHUNK_OVERHEAD)).expect("pool has room");
    }
    let (job_tx, job_rx) = bounded::<(u64, PooledBuf)>(nbuf);
    let (res_tx, res_rx) = unbounded::<(u64, Result<PooledBuf, OpenError>)>();
    let abort = AtomicBool::new(false);

    std::thread::scope(|s| {
        let abort = &abort;
        s.spawn(move || {
            for index in first..=last {
                if abort.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(buf) = free_rx.recv() else { break };
                if job_tx.send((index, buf)).is_err() {
                    break;
                }
            }
        });
        for _ in 0..job.threads {
            let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
            s.spawn(move || {
                let mut spare = PooledBuf::take(cs as usize + CHUNK_OVERHEAD);
                for (index, mut buf) in job_rx {
                    let c = &job.chunks[index as usize];
                    let r = if abort.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        // A compressed chunk's plaintext lands in `spare`: trade the buffers.
                        read_and_open(job, index, c, &mut buf, &mut spare).map(|o| {
                            if o.in_spare() {
                                std::mem::swap(&mut buf, &mut spare)
                            }
                        })
                    };
                    let _ = res_tx.send((index, r.map(|_| buf)));
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        let mut next = first;
        let mut pending: BTreeMap<u64, PooledBuf> = BTreeMap::new();
        let mut error = None;
        for (index, r) in &res_rx {
            match r {
                Ok(buf) if error.is_none() => {
                    pending.insert(index, buf);
                }
                Ok(buf) => {
                    let _ = free_tx.send(buf);
                }
                Err(e) => {
                    abort.store(true, Ordering::SeqCst);
                    // Report the error at the lowest position, so the
                    // message is the same whatever the thread timing.
                    match &error {
                        Some((i, _)) if *i <= index => {}
                        _ => error = Some((index, e)),
                    }
                }
            }
            while let Some(buf) = pending.remove(&next) {
                if error.is_none() {
                    let lo = next * cs;
                    let len = job.chunks[next as usize].len as u64;
                    let a = start.max(lo) - lo;
                    let b = end.min(lo + len) - lo;
                    let plain = &buf.slice(HEADER_LEN + b as usize)[HEADER_LEN + a as usize..];
                    if let Err(e) = out.write_all(plain) {
                        abort.store(true, Ordering::SeqCst);
                        error = Some((next, OpenError::Output(e)));
                    }
                    crate::progress::add(plain.len() as u64);
                }
                let _ = free_tx.send(buf);
                next += 1;
            }
            if error.is_some() {
                // Return what is pending so the dispatcher is never stuck.
                for (_, b) in std::mem::take(&mut pending) {
                    let _ = free_tx.send(b);
                }
            }
        }
        drop(free_tx);
        match error {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    })
}

/// Read chunk `index` into `buf` and open it there. Its plaintext is at
/// `buf[HEADER_LEN..]`, or at `spare[HEADER_LEN..]` when it was compressed
/// (see [`custos_store::format::Opened`]); `spare` is as long as `buf`.
/// [`open_stream`] on the caller's thread alone (a small dataset, or one
/// of many read side by side by the caller's own workers).
fn open_inline(job: &OpenJob<'_>, start: u64, end: u64, out: &mut dyn Write) -> Result<(), OpenError> {
    let cs = job.chunk_size;
    let mut buf = PooledBuf::take(cs as usize + CHUNK_OVERHEAD);
    let mut spare = PooledBuf::take(cs as usize + CHUNK_OVERHEAD);
    for index in start / cs..=(end - 1) / cs {
        let c = &job.chunks[index as usize];
        if read_and_open(job, index, c, &mut buf, &mut spare)?.in_spare() {
            std::mem::swap(&mut buf, &mut spare);
        }
        let lo = index * cs;
        let a = start.max(lo) - lo;
        let b = end.min(lo + c.len as u64) - lo;
        let plain = &buf.slice(HEADER_LEN + b as usize)[HEADER_LEN + a as usize..];
        out.write_all(plain).map_err(OpenError::Output)?;
        crate::progress::add(plain.len() as u64);
    }
    Ok(())
}

fn read_and_open(
    job: &OpenJob<'_>,
    index: u64,
    c: &ChunkRef,
    buf: &mut ChunkBuf,
    spare: &mut ChunkBuf,
) -> Result<Opened, OpenError> {
    let n = read_chunk(job, index, c, buf)?;
    spare.ensure(HEADER_LEN + c.len as usize);
    let out = &mut spare.slice_mut(HEADER_LEN + c.len as usize)[HEADER_LEN..];
    open_chunk(job.key, &job.dataset, &c.id, index, c.len, buf.slice_mut(n), out)
        .map_err(|e| chunk_problem(index, c, ChunkProblem::Format(e)))
}

/// Read chunk `index` into `buf` and authenticate and decrypt it there,
/// leaving its body encoded (see [`custos_store::format::open_chunk_body`]).
fn read_and_unseal(job: &OpenJob<'_>, index: u64, c: &ChunkRef, buf: &mut ChunkBuf) -> Result<Opened, OpenError> {
    let n = read_chunk(job, index, c, buf)?;
    open_chunk_body(job.key, &job.dataset, &c.id, index, c.len, buf.slice_mut(n))
        .map_err(|e| chunk_problem(index, c, ChunkProblem::Format(e)))
}

fn chunk_problem(index: u64, c: &ChunkRef, problem: ChunkProblem) -> OpenError {
    OpenError::Chunk { index, id: c.id, problem }
}

fn read_chunk(job: &OpenJob<'_>, index: u64, c: &ChunkRef, buf: &mut ChunkBuf) -> Result<usize, OpenError> {
    let max = job.chunk_size as usize + CHUNK_OVERHEAD;
    job.volume.read_chunk(&c.id, buf, max).map_err(|e| match e {
        StoreError::Missing { .. } => chunk_problem(index, c, ChunkProblem::Missing),
        StoreError::TooLarge { size, .. } => chunk_problem(index, c, ChunkProblem::Oversized { size }),
        e => OpenError::Store(e),
    })
}

/// Re-seal a generation chunk by chunk from one key and binding to another
/// (a logical copy): each worker reads a source chunk, opens it in place,
/// and seals the same buffer again (the body sits at the same offset in
/// both). A compressed body is sealed again as it is, never decompressed,
/// and the copy's fingerprints are derived from the source's
/// ([`Fingerprinter::for_copy`]), so the plaintext is neither decompressed
/// nor hashed: the source's authentication tag vouches for the body.
/// Positions with a `reuse` entry are taken as they are, unread.
pub(crate) struct TranscodeJob<'a> {
    pub from: OpenJob<'a>,
    pub to_key: &'a DataKey,
    pub to_id: DatasetId,
    pub to_volume: &'a dyn Volume,
    pub reuse: &'a [Option<ChunkRef>],
}

pub(crate) enum TranscodeError {
    Source(OpenError),
    Target(SealError),
}

pub(crate) struct TranscodeOutcome {
    pub result: Result<Vec<ChunkRef>, TranscodeError>,
    /// Chunks this run stored (to delete again if the run fails).
    pub written: Vec<ChunkId>,
}

pub(crate) fn transcode(job: &TranscodeJob<'_>) -> TranscodeOutcome {
    let fp = Fingerprinter::for_copy(job.to_key);
    let n = job.from.chunks.len();
    // No more workers (each with a chunk buffer) than chunks to re-seal:
    // an incremental copy often has one or two.
    let todo = job.reuse.iter().take(n).filter(|r| r.is_none()).count() + n.saturating_sub(job.reuse.len());
    let threads = job.from.threads.min(todo).max(1);
    let (idx_tx, idx_rx) = bounded::<usize>(threads * 2);
    let (done_tx, done_rx) = unbounded::<(usize, ChunkRef, bool)>();
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<(usize, TranscodeError)>> = Mutex::new(None);
    let fail = |i: usize, e: TranscodeError| {
        abort.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().expect("error slot");
        // Keep the lowest position, so the message does not depend on timing.
        if slot.as_ref().is_none_or(|(j, _)| i < *j) {
            *slot = Some((i, e));
        }
    };
    // One worker's loop over the positions it is handed.
    let work = |idx: &mut dyn Iterator<Item = usize>, done_tx: &crossbeam_channel::Sender<(usize, ChunkRef, bool)>| {
        let mut buf = None;
        for i in idx {
            if abort.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(r) = job.reuse.get(i).copied().flatten() {
                crate::progress::add(r.len as u64);
                done_tx.send((i, r, false)).expect("collector alive");
                continue;
            }
            let c = &job.from.chunks[i];
            let buf = buf.get_or_insert_with(|| PooledBuf::take(job.from.chunk_size as usize + CHUNK_OVERHEAD));
            let opened = match read_and_unseal(&job.from, i as u64, c, buf) {
                Ok(o) => o,
                Err(e) => {
                    fail(i, TranscodeError::Source(e));
                    continue;
                }
            };
            let fingerprint = fp.fingerprint(&c.fingerprint);
            let id = job.to_volume.new_chunk_id();
            let sealed = buf.slice_mut(opened.body_len + CHUNK_OVERHEAD);
            let res = seal_chunk(job.to_key, &job.to_id, &id, i as u64, opened.codec, sealed)
                .map_err(SealError::Format)
                .and_then(|_| job.to_volume.put_chunk(&id, sealed).map_err(SealError::Store));
            match res {
                Ok(()) => {
                    crate::progress::add(c.len as u64);
                    done_tx.send((i, ChunkRef { id, len: c.len, fingerprint }, true)).expect("collector alive")
                }
                Err(e) => fail(i, TranscodeError::Target(e)),
            }
        }
    };
    if threads == 1 {
        // One worker: this thread (a small dataset, or one of many copied
        // side by side by the caller's own workers).
        drop(idx_tx);
        work(&mut (0..n), &done_tx);
        drop(done_tx);
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (idx_rx, done_tx) = (idx_rx.clone(), done_tx.clone());
                let work = &work;
                s.spawn(move || work(&mut idx_rx.into_iter(), &done_tx));
            }
            drop(done_tx);
            for i in 0..n {
                if abort.load(Ordering::Relaxed) || idx_tx.send(i).is_err() {
                    break;
                }
            }
            drop(idx_tx);
        });
    }
    let mut chunks: Vec<Option<ChunkRef>> = vec![None; n];
    let mut written = Vec::new();
    for (i, c, new) in done_rx {
        if new {
            written.push(c.id);
        }
        chunks[i] = Some(c);
    }
    let result = match first_error.into_inner().expect("error slot") {
        Some((_, e)) => Err(e),
        None => Ok(chunks.into_iter().map(|c| c.expect("every position reported")).collect()),
    };
    TranscodeOutcome { result, written }
}

/// Copy sealed chunk objects as they are from one volume to another, on
/// worker threads (a raw copy). An object the target holds already is
/// trusted only when it has the source's size and either `committed` says
/// the catalog records it on the target (it was made durable before that
/// commit) or its bytes equal the source's; otherwise it is replaced. Such
/// a leftover is what a killed or racing copy leaves: it is never trusted
/// on its name alone. `layout` is the generation's (chunk size, dataset
/// size) when `ids` are its chunks in order, so progress counts plaintext
/// bytes even for compressed chunks; without it progress counts sealed
/// bodies.
pub(crate) fn copy_raw(
    ids: &[ChunkId],
    layout: Option<(u64, u64)>,
    from: &dyn Volume,
    to: &dyn Volume,
    max_len: usize,
    threads: usize,
    committed: &(dyn Fn(&ChunkId) -> bool + Sync),
) -> RawOutcome {
    let threads = threads.min(ids.len()).max(1);
    let (idx_tx, idx_rx) = bounded::<usize>(threads * 2);
    let (done_tx, done_rx) = unbounded::<(ChunkId, RawStep)>();
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (idx_rx, done_tx) = (idx_rx.clone(), done_tx.clone());
            let (abort, first_error) = (&abort, &first_error);
            s.spawn(move || {
                let mut buf = PooledBuf::take(max_len);
                let mut theirs: Option<PooledBuf> = None;
                for i in idx_rx {
                    if abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    let id = &ids[i];
                    let r = copy_one(id, from, to, max_len, committed, &mut buf, &mut theirs);
                    if let Ok(RawStep::Written) = r {
                        crate::progress::add(match layout {
                            Some((cs, size)) => cs.min(size.saturating_sub(i as u64 * cs)),
                            None => {
                                from.chunk_len(id).ok().flatten().unwrap_or(0).saturating_sub(CHUNK_OVERHEAD as u64)
                            }
                        });
                    }
                    match r {
                        Ok(step) => done_tx.send((*id, step)).expect("collector alive"),
                        Err(e) => {
                            abort.store(true, Ordering::SeqCst);
                            first_error.lock().expect("error slot").get_or_insert(e);
                        }
                    }
                }
            });
        }
        drop(done_tx);
        for i in 0..ids.len() {
            if abort.load(Ordering::Relaxed) || idx_tx.send(i).is_err() {
                break;
            }
        }
        drop(idx_tx);
    });
    let mut out = RawOutcome { result: Ok(()), written: Vec::new(), reused: Vec::new() };
    for (id, step) in done_rx {
        match step {
            RawStep::Written => out.written.push(id),
            RawStep::Committed => out.reused.push(id),
            RawStep::Verified => {}
        }
    }
    if let Some(e) = first_error.into_inner().expect("error slot") {
        out.result = Err(e);
    }
    out
}

/// What a raw copy did, object by object.
pub(crate) struct RawOutcome {
    pub result: Result<(), StoreError>,
    /// Objects this run stored.
    pub written: Vec<ChunkId>,
    /// Objects it left in place because the catalog records them on the
    /// target already: the commit must check they are still recorded.
    pub reused: Vec<ChunkId>,
}

enum RawStep {
    Written,
    /// On the target already and recorded there by the catalog.
    Committed,
    /// On the target already, not recorded, and byte for byte the source's.
    Verified,
}

fn copy_one(
    id: &ChunkId,
    from: &dyn Volume,
    to: &dyn Volume,
    max_len: usize,
    committed: &(dyn Fn(&ChunkId) -> bool + Sync),
    buf: &mut PooledBuf,
    theirs: &mut Option<PooledBuf>,
) -> Result<RawStep, StoreError> {
    let existing = to.chunk_len(id)?;
    if existing.is_some() && existing == from.chunk_len(id)? && committed(id) {
        return Ok(RawStep::Committed);
    }
    let n = from.read_chunk(id, buf, max_len)?;
    let same_bytes = |theirs: &mut Option<PooledBuf>| -> Result<bool, StoreError> {
        let t = theirs.get_or_insert_with(|| PooledBuf::take(max_len));
        match to.read_chunk(id, t, max_len) {
            Ok(m) => Ok(m == n && t.slice(m) == buf.slice(n)),
            Err(StoreError::Missing { .. } | StoreError::TooLarge { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    };
    if existing.is_some() {
        if same_bytes(theirs)? {
            return Ok(RawStep::Verified);
        }
        // A short or foreign object (an interrupted attempt's, or a damaged
        // copy): an id names one content only, the source's, so it is
        // replaced by it.
        to.delete_chunk(id)?;
    }
    match to.put_chunk(id, buf.slice(n)) {
        Ok(()) => Ok(RawStep::Written),
        // A concurrent copy of the same chunk got there first.
        Err(e @ StoreError::Exists { .. }) => match same_bytes(theirs)? {
            true => Ok(RawStep::Verified),
            false => Err(e),
        },
        Err(e) => Err(e),
    }
}
