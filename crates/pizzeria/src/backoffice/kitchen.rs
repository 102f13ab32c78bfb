//! The kitchen: answers `PlaceTicket` by baking in one of a fixed number of ovens
//! and answering when the pizzas are out. A caller that gives up (a call's deadline passed)
//! drops the bake, which frees the oven. The kitchen keeps no state: a repeated ticket bakes
//! again, which costs oven time and nothing else. A ticket out of its bounds
//! ([`PlaceTicket::check`](crate::commands::PlaceTicket::check)) is refused as invalid input
//! before it takes an oven.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tabgrab::HandlerError;
use tokio::sync::Semaphore;

use crate::commands::{Baked, PlaceTicket};

/// The kitchen's state: a cheap-to-clone handle.
#[derive(Clone, Debug)]
pub struct Ovens {
    /// One permit per oven.
    ovens: Arc<Semaphore>,
    /// Time an order spends in an oven.
    bake_time: Duration,
    /// Orders baked.
    baked: Arc<AtomicU64>,
}

impl Ovens {
    /// A kitchen with `ovens` ovens baking for `bake_time`.
    pub fn new(ovens: usize, bake_time: Duration) -> Ovens {
        Ovens {
            ovens: Arc::new(Semaphore::new(ovens.clamp(1, Semaphore::MAX_PERMITS))),
            bake_time,
            baked: Arc::default(),
        }
    }

    /// Orders baked so far.
    pub fn baked(&self) -> u64 {
        self.baked.load(Ordering::Relaxed)
    }

    /// Bakes an order (after checking its bounds).
    pub async fn bake(&self, t: &PlaceTicket) -> Result<Baked, HandlerError> {
        t.check()
            .map_err(|invalid| HandlerError::invalid(invalid.0))?;
        let _oven = Arc::clone(&self.ovens).acquire_owned().await.map_err(|_| {
            HandlerError::transient(tabgrab::Error::new(
                tabgrab::ErrorKind::Closed,
                "the kitchen is closed",
            ))
        })?;
        tokio::time::sleep(self.bake_time).await;
        self.baked.fetch_add(1, Ordering::Relaxed);
        Ok(Baked {
            order_id: t.order_id,
        })
    }
}
