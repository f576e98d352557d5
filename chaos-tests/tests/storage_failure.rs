//! A node whose disk fills up: the storage error stops its Raft. From then
//! on it must say so (`/readyz` and `/healthz` 503 with the reason, writers
//! `507 Insufficient Storage` with a JSON error), exit with code 74 so that
//! a supervisor restarts it, and once restarted with room on the disk it
//! must still have every event it acknowledged (delivered to the receiver).
//!
//! The full disk is a soft `RLIMIT_FSIZE` on the process with `SIGXFSZ`
//! ignored: a write that would take a file past the limit fails with
//! `EFBIG`, the same path through the storage code as `ENOSPC` on a full
//! disk, without root or a small filesystem.

use std::time::Duration;

use anyhow::Context as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use strait_chaos_tests::{
    Behavior, Ledger, NodeOptions, Payload, Receiver, SentEvent, StraitProcess, bounded,
    check_conservation, ensure_no_panic, entry_outcomes, http_target, retry,
};

const BUS: &str = "default";
const RULE: &str = "disk-sink";
const SOURCE: &str = "chaos.disk";
/// Files the node writes may not grow past this: the Raft log segment
/// reaches it after a few thousand events.
const FILE_LIMIT: u64 = 3 * 1024 * 1024;
const EXIT_AFTER_SECS: u64 = 3;
/// `strait serve`'s exit code after a storage failure.
const EXIT_STORAGE_FAILED: i32 = 74;

fn ensure_storage_failed(
    reply: &strait_chaos_tests::HttpReply,
    status: u16,
    what: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        reply.status == status,
        "{what}: expected HTTP {status}, got {}: {}",
        reply.status,
        reply.text()
    );
    anyhow::ensure!(
        reply.error_code().as_deref() == Some("StorageFailed"),
        "{what}: expected a JSON error with code StorageFailed, got {}",
        reply.text()
    );
    let message = reply.error_message().unwrap_or_default();
    anyhow::ensure!(
        message.contains("File too large") && message.contains("restart"),
        "{what}: the message should give the operating system's error and say to restart: {message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_node_loudly_and_a_restart_keeps_every_acknowledged_event()
-> anyhow::Result<()> {
    bounded(Duration::from_secs(150), async {
        let receiver = Receiver::start(Behavior::Ok).await?;
        let mut node = StraitProcess::start(
            NodeOptions::dev()
                .config(json!({
                    "dispatch": {"checkpoint_interval_ms": 50},
                    "storage_failure_exit_secs": EXIT_AFTER_SECS,
                }))
                .file_size_limit(FILE_LIMIT),
        )
        .await?;
        let rule = json!({
            "pattern": {"source": [SOURCE]},
            "targets": [http_target("sink", &receiver.url("/sink"), retry(10_000, 20, 500))],
        });
        node.put_rule(BUS, RULE, &rule)
            .await?
            .expect_status(200, "PUT rule")?;

        // Fill the disk: batches until one is refused.
        let client = node.client();
        let mut ledger = Ledger::new();
        let mut rng = StdRng::seed_from_u64(0xd15c_f011);
        let mut n = 0usize;
        let refused = loop {
            let batch: Vec<SentEvent> = (0..50)
                .map(|_| {
                    n += 1;
                    let id = format!("disk-{n:06}");
                    let payload = Payload::random(&mut rng, &id);
                    SentEvent::new(id, SOURCE, "chaos.disk.filled", payload)
                })
                .collect();
            for ev in &batch {
                ledger.record_sent(ev);
            }
            let events: Vec<Value> = batch.iter().map(SentEvent::to_json).collect();
            let reply = client.post_batch(BUS, &events).await?;
            if reply.status != 200 {
                for ev in &batch {
                    ledger.record_in_doubt(&ev.id);
                }
                break reply;
            }
            for (i, (_, status, _)) in entry_outcomes(&reply).into_iter().enumerate() {
                anyhow::ensure!(status == "accepted", "event {i} answered {status}");
                ledger.record_acked(&batch[i].id);
            }
            anyhow::ensure!(
                n < 200_000,
                "{n} events accepted under a {FILE_LIMIT}-byte file limit: the limit does not apply"
            );
        };
        let acked = ledger.acked().len();
        eprintln!("acknowledged {acked} events before the disk filled up");
        anyhow::ensure!(acked >= 500, "only {acked} events before the failure");
        ensure_storage_failed(&refused, 507, "the write that hit the full disk")?;

        // Stuck until restarted, and says so, even once there is room again.
        node.lift_file_size_limit()?;
        let more = vec![
            SentEvent::new(
                "disk-late",
                SOURCE,
                "chaos.disk.late",
                Payload::Text("late".into()),
            )
            .to_json(),
        ];
        ensure_storage_failed(
            &client.post_batch(BUS, &more).await?,
            507,
            "a write after the failure",
        )?;
        ensure_storage_failed(
            &node.put_rule(BUS, "another", &rule).await?,
            507,
            "a rule change after the failure",
        )?;
        ensure_storage_failed(&client.get_json("/readyz").await?, 503, "/readyz")?;
        ensure_storage_failed(&client.get_json("/healthz").await?, 503, "/healthz")?;
        client
            .get_rule(BUS, RULE)
            .await?
            .expect_status(200, "reads still work")?;

        // Exits for a supervisor to restart it, with a distinct code.
        let status = node
            .wait_exit(Duration::from_secs(EXIT_AFTER_SECS + 20))
            .await?;
        anyhow::ensure!(
            status.code() == Some(EXIT_STORAGE_FAILED),
            "expected exit code {EXIT_STORAGE_FAILED} after the storage failure, got {status}"
        );
        let log = std::fs::read_to_string(node.stderr_path())?;
        anyhow::ensure!(
            log.contains("storage failed: this node accepts no writes until it is restarted"),
            "the log does not say that storage failed:\n{}",
            node.stderr_tail(4096)
        );

        // Restarted with room on the disk: everything acknowledged is there.
        node.restart().await?;
        receiver
            .wait_for_ids(ledger.acked().iter(), Duration::from_secs(60))
            .await
            .context("every acknowledged event must be delivered after the restart")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = check_conservation(&ledger, &receiver.events());
        eprintln!("conservation: {report}");
        report.ensure_ok()?;
        // And the node takes writes again.
        client
            .post_batch(BUS, &more)
            .await?
            .expect_status(200, "a write after the restart")?;
        client
            .get_json("/readyz")
            .await?
            .expect_status(200, "/readyz after the restart")?;
        ensure_no_panic(&node)?;
        Ok(())
    })
    .await
}
