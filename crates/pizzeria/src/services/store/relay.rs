//! The store's background work: [`StoreRelay`], the outbox relay that publishes the events
//! the handlers staged (after their commit, keeping their ids), and the pruners that keep the
//! two inboxes to [`INBOX_RETENTION`]. A handler's unit only stages; this is what makes a
//! staged event go out, in this process or in any other that shares a PostgreSQL store.

use std::time::Duration;

use tabgrab::backend::Bus;
use tabgrab::inbox::Pruner;
use tabgrab::outbox::Relay;
use tabgrab::{Error, ErrorKind};

use super::{Db, INBOX_RETENTION, Store};

/// How often the inboxes are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Store {
    /// Starts a relay that publishes the staged events to the pizzeria topic of `bus`, and
    /// the pruners that keep the two inboxes to [`INBOX_RETENTION`] (hourly). Several relays
    /// may run on one PostgreSQL store (one per process; pruning twice is harmless).
    pub fn relay(&self, bus: &Bus) -> StoreRelay {
        let store = self.clone();
        let bus = bus.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let db = store.db().await?;
            let relay: Relay = on_db!(db, p => p.outbox.relay(bus).poll_interval(Duration::from_millis(50)).start());
            let pruners: [Pruner; 3] = on_db!(db, p => [
                p.payment.spawn_pruner(PRUNE_EVERY, INBOX_RETENTION),
                p.inventory.spawn_pruner(PRUNE_EVERY, INBOX_RETENTION),
                p.delivery.spawn_pruner(PRUNE_EVERY, INBOX_RETENTION),
            ]);
            stopped.cancelled().await;
            for pruner in pruners {
                if let Err(e) = pruner.shutdown().await {
                    tracing::warn!(error = %e, "an inbox pruner stopped with an error");
                }
            }
            relay.shutdown().await
        });
        StoreRelay {
            stop,
            task: Some(task),
        }
    }
}

/// The relay of a [`Store`], started by [`Store::relay`].
#[derive(Debug)]
pub struct StoreRelay {
    /// Stops the relay.
    stop: tokio_util::sync::CancellationToken,
    /// Opens the store, runs the relay, stops it.
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl StoreRelay {
    /// Stops the relay after its current round and waits.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| {
                Error::new(ErrorKind::Closed, "the pizzeria's outbox relay failed").with_source(e)
            })?,
            None => Ok(()),
        }
    }
}

impl Drop for StoreRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
