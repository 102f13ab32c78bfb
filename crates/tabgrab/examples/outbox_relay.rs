//! The transactional outbox and the idempotent inbox on the embedded default: a front desk
//! writes each order and its `OrderAccepted` event in one SQLite transaction; a relay
//! publishes the events; a payment consumer charges each order once, even when an event is
//! delivered twice.
//!
//! Run: `cargo run -p tabgrab --example outbox_relay`

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use tabgrab::inbox::Inbox;
use tabgrab::outbox::Outbox;

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(type = "example.order.accepted.v1", event)]
struct OrderAccepted {
    order_id: String,
    cents: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("app.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, cents INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE ledger (order_id TEXT NOT NULL, cents INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    let bus = EmbeddedBus::open(dir.path().join("bus"))?;

    // The payment service: its ledger row and its inbox row commit together.
    let inbox = Inbox::sqlite(pool.clone(), "payment").await?;
    let payment = {
        let (pool, inbox) = (pool.clone(), inbox.clone());
        Subscription::builder(&bus, "orders", "payment")
            .handle(move |order: OrderAccepted, ctx: Context| {
                let (pool, inbox) = (pool.clone(), inbox.clone());
                async move {
                    let mut tx = pool.begin().await?;
                    if inbox.record(&mut tx, ctx.envelope()).await? {
                        sqlx::query("INSERT INTO ledger (order_id, cents) VALUES (?, ?)")
                            .bind(&order.order_id)
                            .bind(order.cents)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok::<(), HandlerError>(())
                }
            })
            .start()?
    };

    // The front desk: each order and its event in one transaction, then the relay publishes.
    let outbox = Outbox::sqlite(pool.clone()).await?;
    let relay = outbox
        .relay(&bus)
        .poll_interval(Duration::from_millis(200))
        .start();
    let publisher = Publisher::new(&bus, "orders", "/example/front-desk")?;
    let mut first = None;
    for (i, cents) in [1200, 950, 1430].into_iter().enumerate() {
        let order_id = format!("o-{i}");
        let event = publisher.envelope(
            &OrderAccepted {
                order_id: order_id.clone(),
                cents,
            },
            &order_id,
        )?;
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (id, cents) VALUES (?, ?)")
            .bind(&order_id)
            .bind(cents)
            .execute(&mut *tx)
            .await?;
        outbox.stage(&mut tx, "orders", &event).await?;
        outbox.commit(tx).await?; // commit, then wake the relay
        first.get_or_insert(event);
    }
    // An order whose transaction rolls back: its event is never published (no ghost).
    let mut tx = pool.begin().await?;
    let ghost = publisher.envelope(
        &OrderAccepted {
            order_id: "o-x".into(),
            cents: 1,
        },
        "o-x",
    )?;
    outbox.stage(&mut tx, "orders", &ghost).await?;
    tx.rollback().await?;
    // A duplicate delivery (as after a relay crash between publish and mark-sent).
    if let Some(first) = &first {
        publisher.publish_envelope(first).await?;
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while (payment.stats().acked < 4 || outbox.pending().await? > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let charged: Vec<(String, i64)> =
        sqlx::query_as("SELECT order_id, cents FROM ledger ORDER BY order_id")
            .fetch_all(&pool)
            .await?;
    println!("charged: {charged:?}");
    println!("outbox: {:?}", outbox.stats());
    println!("relay:  {:?}", relay.stats());
    println!("inbox:  {:?}", inbox.stats());
    relay.shutdown().await?;
    payment.shutdown().await?;
    Ok(())
}
