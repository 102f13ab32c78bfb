//! Model test: random sequences of operations against the log and against a `Vec` model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use tabgrab_log::{Config, ErrorKind, Log, SimStorage};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    AppendBatch(Vec<Vec<u8>>),
    Read { from: u64, max: usize },
    ReaderBatch { from: u64, max: usize },
    Reopen,
    Commit { consumer: usize, offset: u64 },
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..150)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => payload().prop_map(Op::Append),
        2 => proptest::collection::vec(payload(), 0..6).prop_map(Op::AppendBatch),
        3 => (0..80u64, 0..20usize).prop_map(|(from, max)| Op::Read { from, max }),
        1 => (0..80u64, 1..20usize).prop_map(|(from, max)| Op::ReaderBatch { from, max }),
        1 => Just(Op::Reopen),
        1 => (0..3usize, any::<u64>()).prop_map(|(consumer, offset)| Op::Commit { consumer, offset }),
    ]
}

const CONSUMERS: [&str; 3] = ["a", "b.c", "d-e_f"];

fn run(ops: Vec<Op>, segment_bytes: u64) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sim = SimStorage::new();
    let cfg = || {
        Config::new("/sim/model")
            .storage(Arc::new(sim.clone()))
            .segment_bytes(segment_bytes)
    };
    let mut log = Log::open(cfg()).unwrap();
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut consumers: HashMap<usize, u64> = HashMap::new();
    rt.block_on(async {
        for op in ops {
            match op {
                Op::Append(p) => {
                    let off = log.append(Bytes::from(p.clone())).await.unwrap();
                    prop_assert_eq!(off, model.len() as u64);
                    model.push(p);
                }
                Op::AppendBatch(ps) => {
                    let r = log
                        .append_batch(ps.iter().cloned().map(Bytes::from).collect())
                        .await
                        .unwrap();
                    let start = model.len() as u64;
                    prop_assert_eq!(r, start..start + ps.len() as u64);
                    model.extend(ps);
                }
                Op::Read { from, max } => {
                    let got = log.read(from, max).unwrap();
                    let lo = (from as usize).min(model.len());
                    let hi = (lo + max).min(model.len());
                    let want = &model[lo..hi];
                    prop_assert_eq!(got.len(), want.len());
                    for (i, (r, w)) in got.iter().zip(want).enumerate() {
                        prop_assert_eq!(r.offset, from + i as u64);
                        prop_assert_eq!(&r.payload[..], &w[..]);
                    }
                    prop_assert!(
                        got.windows(2)
                            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
                    );
                }
                Op::ReaderBatch { from, max } => {
                    if (from as usize) < model.len() {
                        let mut reader = log.reader(from);
                        let got = reader.next_batch(max).await.unwrap();
                        prop_assert!(!got.is_empty() && got.len() <= max);
                        prop_assert_eq!(&got[0].payload[..], &model[from as usize][..]);
                        prop_assert_eq!(reader.position(), got.last().unwrap().offset + 1);
                    }
                }
                Op::Reopen => {
                    log.close().await.unwrap();
                    log = Log::open(cfg()).unwrap();
                    prop_assert!(
                        log.recovery_report().is_clean(),
                        "{:?}",
                        log.recovery_report()
                    );
                }
                Op::Commit { consumer, offset } => {
                    log.commit_consumer(CONSUMERS[consumer], offset).unwrap();
                    consumers.insert(consumer, offset);
                }
            }
            prop_assert_eq!(log.end_offset(), model.len() as u64);
            prop_assert_eq!(log.start_offset(), 0);
            for (i, name) in CONSUMERS.iter().enumerate() {
                prop_assert_eq!(
                    log.consumer_offset(name).unwrap(),
                    consumers.get(&i).copied()
                );
            }
        }
        prop_assert_eq!(
            log.read(model.len() as u64 + 1, 5)
                .map(|v| v.len())
                .map_err(|e| e.kind()),
            Ok::<usize, ErrorKind>(0)
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn log_matches_a_vec_model(
        ops in proptest::collection::vec(op(), 1..60),
        segment_bytes in prop_oneof![Just(100u64), 100..2000u64, Just(64 << 20)],
    ) {
        run(ops, segment_bytes)?;
    }
}
