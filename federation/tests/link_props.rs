//! The link protocol core under a hostile network, in simulated time: a
//! sender and a receiver exchange batches over a channel that drops,
//! duplicates, reorders and disconnects. Every sequence must be committed
//! exactly once, in order, and the sender must end with everything
//! acknowledged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use strait_federation::link::proto::{
    Admit, Batch, Receiver, Sender, SenderConfig, decode_batch, encode_batch,
};

#[derive(Debug, Clone)]
enum Msg {
    Data(Bytes),
    Ack(u64),
    Gap(u64),
}

#[derive(Debug, Clone, Copy)]
struct Net {
    drop: u8,
    dup: u8,
    reorder: u8,
    disconnect: u8,
}

fn roll(rng: &mut u64) -> u8 {
    // xorshift: deterministic per case
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng % 100) as u8
}

fn run(total: u64, cfg: SenderConfig, net: Net, seed: u64) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let mut rng = seed | 1;
    let mut sender = Sender::new(cfg, 0);
    let mut receiver = Receiver::new(0);
    let mut committed: Vec<u64> = Vec::new();
    let mut to_rx: VecDeque<Msg> = VecDeque::new();
    let mut to_tx: VecDeque<Msg> = VecDeque::new();
    // The outbox fills over time.
    let mut produced = 0u64;
    let mut step = 0u64;
    while sender.acked() < total {
        step += 1;
        prop_assert!(
            step < 200_000,
            "no progress: acked {} of {total}",
            sender.acked()
        );
        let now = t0 + Duration::from_millis(step);
        if produced < total {
            produced = (produced + 7).min(total);
            sender.outbox_extended(produced);
        }
        while let Some(w) = sender.want() {
            let items: Vec<Bytes> = (0..w.max_items as u64)
                .map(|i| Bytes::from((w.first + i).to_be_bytes().to_vec()))
                .collect();
            let last = w.first + items.len() as u64 - 1;
            let b = Batch {
                origin: "idc".into(),
                first_seq: w.first,
                items,
                specs: Vec::new(),
            };
            let enc = encode_batch(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            sender.sent(w.first, last, enc.len(), now);
            to_rx.push_back(Msg::Data(enc));
        }
        // The network: maybe reorder, drop, duplicate.
        for q in [&mut to_rx, &mut to_tx] {
            if q.len() > 1 && roll(&mut rng) < net.reorder {
                let i = (roll(&mut rng) as usize) % q.len();
                let m = q.remove(i);
                if let Some(m) = m {
                    q.push_back(m);
                }
            }
        }
        if roll(&mut rng) < net.disconnect {
            to_rx.clear();
            to_tx.clear();
            sender.on_disconnect();
            continue;
        }
        if let Some(m) = to_rx.pop_front() {
            if roll(&mut rng) < net.dup {
                to_rx.push_back(m.clone());
            }
            if roll(&mut rng) >= net.drop
                && let Msg::Data(bytes) = m
            {
                let b = decode_batch(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let reply = match receiver.admit(b.first_seq, b.items.len()) {
                    Admit::Fresh { skip } => {
                        for item in &b.items[skip..] {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(item);
                            committed.push(u64::from_be_bytes(a));
                        }
                        receiver.on_committed(b.last_seq());
                        Msg::Ack(b.last_seq())
                    }
                    Admit::Repeat { upto } => Msg::Ack(upto),
                    Admit::Gap { expected } => Msg::Gap(expected),
                };
                to_tx.push_back(reply);
            }
        }
        if let Some(m) = to_tx.pop_front()
            && roll(&mut rng) >= net.drop
        {
            match m {
                Msg::Ack(upto) => sender.on_ack(upto),
                Msg::Gap(expected) => sender.on_gap(expected),
                Msg::Data(_) => {}
            }
        }
        sender.on_tick(now);
    }
    let want: Vec<u64> = (1..=total).collect();
    prop_assert_eq!(committed, want);
    prop_assert_eq!(sender.backlog(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_sequence_is_committed_once_in_order(
        total in 1u64..400,
        max_batch_items in 1usize..40,
        window in 1usize..6,
        window_bytes in 1usize..2048,
        drop in 0u8..30,
        dup in 0u8..30,
        reorder in 0u8..50,
        disconnect in 0u8..3,
        seed in any::<u64>(),
    ) {
        let cfg = SenderConfig {
            max_batch_items,
            window,
            window_bytes,
            retransmit_after: Duration::from_millis(40),
        };
        run(total, cfg, Net { drop, dup, reorder, disconnect }, seed)?;
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_batch(Bytes::from(bytes));
    }

    #[test]
    fn batches_round_trip(
        origin in "[a-z0-9-]{0,40}",
        first in 1u64..u64::MAX / 2,
        items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..20),
        specs in proptest::collection::vec(("[0-9a-f]{0,64}", proptest::collection::vec(any::<u8>(), 0..50)), 0..4),
    ) {
        let b = Batch {
            origin,
            first_seq: first,
            items: items.into_iter().map(Bytes::from).collect(),
            specs: specs.into_iter().map(|(h, d)| (Bytes::from(h), Bytes::from(d))).collect(),
        };
        let enc = encode_batch(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode_batch(enc).map_err(|e| TestCaseError::fail(e.to_string()))?, b);
    }
}
