//! The reader of the kernel's event ring buffer, which gives an event back
//! to the kernel only once its record is in the audit log.
//!
//! A BPF ring buffer forgets an event, and may write a new one over it, as
//! soon as its reader moves the consumer position past it. aya's
//! [`RingBuf`](aya::maps::RingBuf) moves it as each event is dropped, so a
//! reader that writes records in batches holds every batch taken from the
//! kernel and not yet written; a daemon killed then (`kill -9`, the OOM
//! killer) loses it. [`EventRing`] reads ahead of the consumer position
//! instead and moves it only when told, after the batch is written
//! ([`EventRing::commit`]). A daemon killed mid-batch leaves the position
//! where the last written batch ended, and the next daemon, which adopts
//! the same pinned ring, reads that batch again. At worst a record is
//! written twice (killed between the write and the commit), never lost.
//!
//! Layout (`kernel/bpf/ringbuf.c`): page 0 holds the consumer position,
//! which the reader writes; page 1 the producer position; the data pages
//! follow, mapped twice in a row so an event that wraps reads as one slice.
//! Each event starts with an 8-byte header: its length with the busy and
//! discard flags in the top bits, then an offset the kernel uses.
//!
//! The kernel wakes the reader (`epoll`) when it commits an event that
//! sits exactly at the consumer position. While a batch is read ahead no
//! such wake-up comes, so [`EventRing::commit`] says whether anything
//! arrived meanwhile, and the caller reads on instead of waiting.

use std::{
    num::NonZeroUsize,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use aya::maps::MapData;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use thiserror::Error;

/// Size of the header in front of every event.
const HEADER_BYTES: u64 = 8;
/// The producer has reserved the event and not yet submitted it.
const BUSY_BIT: u32 = 1 << 31;
/// The producer discarded the event.
const DISCARD_BIT: u32 = 1 << 30;

/// Errors opening the ring.
#[derive(Debug, Error)]
pub enum RingError {
    /// The map's size could not be read.
    #[error("cannot read the event ring buffer's size: {0}")]
    Info(#[source] aya::maps::MapError),
    /// The ring's pages could not be mapped.
    #[error("cannot map the event ring buffer: {0}")]
    Map(#[source] nix::Error),
}

/// The event ring buffer, read ahead of its consumer position.
pub struct EventRing {
    /// Page 0: the consumer position, written here.
    consumer: Mapping,
    /// Page 1 and the data pages twice, read only.
    producer: Mapping,
    page_size: u64,
    mask: u64,
    /// The next event to read.
    read: u64,
    /// The consumer position last published to the kernel.
    committed: u64,
    /// The producer position last seen.
    produced: u64,
    /// What the reader did, for the backlog gauge on another thread.
    progress: std::sync::Arc<ReaderProgress>,
    /// Owns the descriptor the mappings and `epoll` use.
    map: MapData,
}

/// One `mmap`ed range, unmapped on drop.
struct Mapping {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: BorrowedFd<'_>,
        len: u64,
        offset: u64,
        protection: ProtFlags,
    ) -> Result<Self, RingError> {
        let invalid = || RingError::Map(nix::Error::EINVAL);
        let len = usize::try_from(len).map_err(|_| invalid())?;
        let length = NonZeroUsize::new(len).ok_or_else(invalid)?;
        let offset = i64::try_from(offset).map_err(|_| invalid())?;
        // SAFETY: a fresh shared mapping of a ring buffer map's pages at an
        // address the kernel chooses; nothing else lives there.
        let ptr = unsafe { mmap(None, length, protection, MapFlags::MAP_SHARED, fd, offset) }
            .map_err(RingError::Map)?;
        Ok(Self { ptr, len })
    }

    /// The position the kernel keeps at the start of a position page.
    fn position(&self) -> &AtomicU64 {
        // SAFETY: the mapping is at least a page, page-aligned, and starts
        // with an `unsigned long` that every writer updates atomically.
        unsafe { &*self.ptr.as_ptr().cast::<AtomicU64>() }
    }

    /// `len` bytes at `offset`; `None` outside the mapping.
    fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: the range lies inside the mapping, which lives as long as
        // the borrow of `self`.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<u8>().add(offset as usize),
                len as usize,
            )
        })
    }

    /// The header word at `offset`, read with the ordering the kernel's
    /// commit pairs with.
    fn header(&self, offset: u64) -> Option<u32> {
        let bytes = self.bytes(offset, 4)?;
        // SAFETY: headers are 8-byte aligned within page-aligned data, and
        // the kernel updates them atomically.
        let word = unsafe { &*bytes.as_ptr().cast::<AtomicU32>() };
        Some(word.load(Ordering::Acquire))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `Mapping::new`, and nothing
        // borrowed from it outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

// SAFETY: the mappings are shared memory that the kernel, not this
// process, synchronises; moving them to another thread changes nothing.
unsafe impl Send for Mapping {}

impl EventRing {
    /// Maps the ring buffer map `map` and starts reading at its consumer
    /// position: where the last reader (an earlier daemon, on a pinned
    /// map) committed.
    pub fn new(map: MapData) -> Result<Self, RingError> {
        let size = u64::from(map.info().map_err(RingError::Info)?.max_entries());
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| u64::try_from(size).ok())
            .unwrap_or(4096);
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(
            fd,
            page_size,
            0,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        )?;
        let producer = Mapping::new(fd, page_size + 2 * size, page_size, ProtFlags::PROT_READ)?;
        let start = consumer.position().load(Ordering::Acquire);
        let produced = producer.position().load(Ordering::Acquire);
        Ok(Self {
            consumer,
            producer,
            page_size,
            mask: size - 1,
            read: start,
            committed: start,
            produced,
            progress: std::sync::Arc::default(),
            map,
        })
    }

    /// The next event, or `None` when none is ready. The kernel does not
    /// reuse its space until [`EventRing::commit`].
    pub fn read_next(&mut self) -> Option<&[u8]> {
        loop {
            if self.read == self.produced {
                self.produced = self.producer.position().load(Ordering::Acquire);
                if self.read == self.produced {
                    return None;
                }
            }
            let offset = self.page_size + (self.read & self.mask);
            let word = self.producer.header(offset)?;
            if word & BUSY_BIT != 0 {
                return None;
            }
            let len = u64::from(word & !(BUSY_BIT | DISCARD_BIT));
            let start = offset + HEADER_BYTES;
            self.read += (HEADER_BYTES + len).next_multiple_of(8);
            self.progress.events_read.fetch_add(1, Ordering::Relaxed);
            if word & DISCARD_BIT == 0 {
                return self.producer.bytes(start, len);
            }
        }
    }

    /// Whether the kernel holds events this reader has not given back.
    pub fn pending(&self) -> bool {
        self.producer.position().load(Ordering::Acquire) != self.committed
    }

    /// Where the reader is: just past the last event [`read_next`]
    /// returned. A position to give events back up to with
    /// [`commit_to`](EventRing::commit_to).
    ///
    /// [`read_next`]: EventRing::read_next
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Gives the events read so far back to the kernel. Returns whether
    /// more are waiting (or being written): the caller reads on, since the
    /// kernel sends no wake-up for them.
    pub fn commit(&mut self) -> bool {
        self.commit_to(self.read)
    }

    /// Gives back the events before `position`, one [`position`] returned,
    /// and keeps those read after it: their records are not written yet.
    /// A position outside what was read and not yet given back is clamped
    /// to it. Returns whether more events wait past what was read.
    ///
    /// [`position`]: EventRing::position
    pub fn commit_to(&mut self, position: u64) -> bool {
        let position = position.clamp(self.committed, self.read);
        if position != self.committed {
            self.consumer.position().store(position, Ordering::Release);
            self.committed = position;
        }
        // Either the load below sees an event committed after the store, or
        // that event's producer sees the new consumer position and wakes
        // the reader.
        fence(Ordering::SeqCst);
        self.produced = self.producer.position().load(Ordering::Acquire);
        self.progress.commits.fetch_add(1, Ordering::Relaxed);
        self.progress.read.store(self.read, Ordering::Relaxed);
        self.produced != self.read
    }
}

/// What the reader has done, shared with the backlog gauge.
#[derive(Debug, Default)]
struct ReaderProgress {
    events_read: AtomicU64,
    commits: AtomicU64,
    read: AtomicU64,
}

/// How far the reader trails the kernel: a second, read-only view of the
/// ring's two position pages, for `baton status` and the metrics. It reads
/// the kernel's positions, not the reader's, so a stalled reader shows.
pub struct RingBacklog {
    positions: Mapping,
    page_size: u64,
    mask: u64,
    progress: std::sync::Arc<ReaderProgress>,
}

/// The ring as its gauge sees it.
#[derive(Debug, serde::Serialize)]
pub struct RingState {
    /// The kernel's consumer position.
    pub consumer: u64,
    /// The kernel's producer position.
    pub producer: u64,
    /// The reader's read-ahead position at its last commit.
    pub reader: u64,
    /// Events the reader has read since it started.
    pub events_read: u64,
    /// Batches it has given back.
    pub commits: u64,
    /// The header word of the event at the consumer position, when one
    /// waits there (its top bit: still being written).
    pub head_header: Option<u32>,
}

// SAFETY: through `&self` the gauge only loads the kernel's positions and
// one header word, each with an atomic load, from a read-only mapping; any
// number of threads may do that at once.
unsafe impl Sync for RingBacklog {}

impl RingBacklog {
    /// Bytes the kernel has queued (or is queueing) that no reader has
    /// given back yet.
    pub fn bytes(&self) -> u64 {
        let consumer = self.positions.position().load(Ordering::Acquire);
        let producer = self
            .positions
            .bytes(self.page_size, 8)
            // SAFETY: 8 bytes at the start of the producer page, which the
            // kernel updates atomically.
            .map(|b| unsafe { &*b.as_ptr().cast::<AtomicU64>() }.load(Ordering::Acquire))
            .unwrap_or(consumer);
        producer.saturating_sub(consumer)
    }

    /// Positions and the reader's progress, for `baton status`.
    pub fn state(&self) -> RingState {
        let consumer = self.positions.position().load(Ordering::Acquire);
        let producer = consumer + self.bytes();
        let head_header = (producer != consumer)
            .then(|| {
                self.positions
                    .header(2 * self.page_size + (consumer & self.mask))
            })
            .flatten();
        RingState {
            consumer,
            producer,
            reader: self.progress.read.load(Ordering::Relaxed),
            events_read: self.progress.events_read.load(Ordering::Relaxed),
            commits: self.progress.commits.load(Ordering::Relaxed),
            head_header,
        }
    }
}

impl EventRing {
    /// A read-only gauge of the backlog, usable from another thread.
    pub fn backlog(&self) -> Result<RingBacklog, RingError> {
        let positions = Mapping::new(
            self.map.fd().as_fd(),
            2 * self.page_size + self.mask + 1,
            0,
            ProtFlags::PROT_READ,
        )?;
        Ok(RingBacklog {
            positions,
            page_size: self.page_size,
            mask: self.mask,
            progress: self.progress.clone(),
        })
    }
}

impl AsFd for EventRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}
