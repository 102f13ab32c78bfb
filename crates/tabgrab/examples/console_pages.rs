//! How long the operator console takes to answer with many dead letters (issue 17: "stays
//! responsive with 100,000 dead letters; the page loads in under a second").
//!
//! Makes `--dead-letters N` dead letters on an embedded bus in a temporary directory (a group
//! whose handler refuses every event), then asks the console's router in-process, five times
//! each, for: the overview, the first page, the last page, one dead letter; and times
//! `DeadLetters::list` beside it (the read every page does). Prints the median and worst.
//!
//! ```sh
//! cargo run --release -p tabgrab --example console_pages -- --dead-letters 100000
//! ```

use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt as _;
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::console::Console;
use tabgrab::event::{Context, DeadLetters, Filter, HandlerError, Publisher, Subscription};
use tabgrab::{Envelope, Message};
use tower::ServiceExt as _;

#[derive(serde::Serialize, serde::Deserialize, Message)]
#[message(type = "bench.parcel.sent.v1", event)]
struct Parcel {
    n: u64,
    note: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut n: u64 = 100_000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dead-letters" => {
                n = args
                    .next()
                    .ok_or("--dead-letters needs a number")?
                    .parse()?
            }
            "-h" | "--help" => {
                println!("console_pages [--dead-letters N]   (default 100000)");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}; try --help").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    let embedded = EmbeddedBus::open(dir.path())?;
    let bus = Bus::from(&embedded);
    let sub = Subscription::builder(&bus, "parcels", "sorter")
        .handle(|_p: Parcel, _ctx: Context| async {
            Err::<(), _>(HandlerError::permanent("no sorting belt for parcels"))
        })
        .start()?;
    sub.ready().await?;
    let publisher = Publisher::new(&bus, "parcels", "/bench")?;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Envelope> = (i..(i + 1000).min(n))
            .map(|k| {
                Envelope::new(
                    "/bench",
                    &Parcel {
                        n: k,
                        note: "x".repeat(100),
                    },
                )
                .map(|e| e.with_subject(format!("parcel-{k}")))
            })
            .collect::<Result<_, _>>()?;
        publisher.publish_batch(&batch).await?;
        i += batch.len() as u64;
    }
    while sub.stats().dead_lettered < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sub.shutdown().await?;
    eprintln!(
        "{n} dead letters made in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let letters = DeadLetters::new(&bus, "parcels")?;
    let one = letters.list(&Filter::default()).await?;
    let id = one.last().map(|k| k.id.clone()).ok_or("no dead letter")?;
    let last_page = (one.len().div_ceil(50)).saturating_sub(1);
    drop(one);
    let router = Console::new(&bus).topic("parcels", &["sorter"]).router();
    let cases = [
        ("DeadLetters::list (every page's read)", None),
        ("GET /", Some("/".to_owned())),
        (
            "GET first page",
            Some("/topics/parcels/dead-letters".to_owned()),
        ),
        (
            "GET last page",
            Some(format!("/topics/parcels/dead-letters?page={last_page}")),
        ),
        (
            "GET one dead letter",
            Some(format!("/topics/parcels/dead-letters/{id}")),
        ),
    ];
    println!("| {n} dead letters | median | worst |\n|---|---|---|");
    for (name, path) in cases {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            match &path {
                None => {
                    letters.list(&Filter::default()).await?;
                }
                Some(path) => {
                    let request = axum::http::Request::get(path).body(Body::empty())?;
                    let response = router.clone().oneshot(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    if !status.is_success() {
                        return Err(format!("{path}: {status}").into());
                    }
                    std::hint::black_box(body);
                }
            }
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "| {name} | {:.0} ms | {:.0} ms |",
            times[2].as_secs_f64() * 1e3,
            times[4].as_secs_f64() * 1e3
        );
    }
    embedded.close().await?;
    Ok(())
}
