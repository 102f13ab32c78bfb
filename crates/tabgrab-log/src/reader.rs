//! [`Reader`]: a cursor that reads acknowledged records and waits for new ones.
//!
//! A reader holds a `watch` receiver on the log's high-water mark; when it has read everything
//! acknowledged it awaits the next change instead of polling. It fetches records in batches
//! (one positional read serves many records) and hands them out one by one from a buffer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::Record;
use crate::error::Error;
use crate::log::{CLOSED, Core, POISONED};

/// How many records `next` fetches at once.
const FETCH: usize = 256;

/// Follows the log from a position, waiting at the tail.
#[derive(Debug)]
pub struct Reader {
    /// The log's shared state.
    core: Arc<Core>,
    /// The offset of the next record to hand out.
    pos: u64,
    /// Records fetched but not yet handed out, starting at `pos`.
    buffered: VecDeque<crate::Record>,
    /// The high-water mark, to wait for new records.
    hwm: watch::Receiver<u64>,
}

impl Reader {
    pub(crate) fn new(core: Arc<Core>, from: u64) -> Reader {
        let hwm = core.visible.subscribe();
        Reader {
            core,
            pos: from,
            buffered: VecDeque::new(),
            hwm,
        }
    }

    /// The next record, waiting until one is acknowledged.
    ///
    /// Errors: `Corrupt` at a damaged range (call [`seek`](Reader::seek) past
    /// `damaged().offsets.end` to skip it explicitly), `Truncated` below the start,
    /// `Closed`/`Poisoned` once the log can produce no more records.
    pub async fn next(&mut self) -> Result<Record, Error> {
        if self.buffered.is_empty() {
            self.fill(FETCH).await?;
        }
        match self.buffered.pop_front() {
            Some(r) => {
                self.pos = r.offset + 1;
                Ok(r)
            }
            None => Err(Error::closed()),
        }
    }

    /// Between 1 and `max` records, waiting until at least one is acknowledged.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, Error> {
        let max = max.max(1);
        if self.buffered.is_empty() {
            self.fill(max).await?;
        }
        let n = max.min(self.buffered.len());
        let out: Vec<Record> = self.buffered.drain(..n).collect();
        if let Some(last) = out.last() {
            self.pos = last.offset + 1;
        }
        Ok(out)
    }

    /// The offset of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the reader to `offset` (e.g. past a damaged range).
    pub fn seek(&mut self, offset: u64) {
        self.pos = offset;
        self.buffered.clear();
    }

    async fn fill(&mut self, max: usize) -> Result<(), Error> {
        loop {
            let end = *self.hwm.borrow_and_update();
            if self.pos < end {
                let records = self.core.read(self.pos, max)?;
                if !records.is_empty() {
                    self.buffered.extend(records);
                    return Ok(());
                }
            }
            match self.core.status.load(Ordering::Acquire) {
                POISONED => {
                    return Err(Error::poisoned(
                        "the log is poisoned; no further records will arrive",
                    ));
                }
                CLOSED => return Err(Error::closed()),
                _ => {}
            }
            if self.hwm.changed().await.is_err() {
                return Err(Error::closed());
            }
        }
    }
}
