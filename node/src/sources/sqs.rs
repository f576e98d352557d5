//! The SQS source: a task per queue long-polls, converts each message
//! (EventBridge envelope, CloudEvent or anything) to a CloudEvent, submits
//! it and deletes the message only after the commit ([`poll_sqs`]).
//! Node-local sources (`aws.sources`) run on every node of the site
//! ([`spawn_local`]); shared sources (`PUT /v1/sources/{name}`) run on the
//! leader of the site they name (`super::run`). Both use the same poller.

use std::time::Duration;

use serde_json::json;
use strait_adapters::aws_common::{AwsCredential, Connection};
use strait_adapters::aws_eventbridge::mapping;
use strait_adapters::aws_sqs::source::{Provision, SqsSource};

use super::StatusCell;
use crate::config::{AwsSource, Limits, NodeConfig};
use crate::ingest::{Entry, Ingest, Outcome, parse_items};

/// Fault injection for tests only: the SQS source waits this many ms
/// between commit and delete, so a test can kill the node in between.
const DELETE_DELAY_ENV: &str = "STRAIT_TEST_AWS_SOURCE_DELETE_DELAY_MS";

/// Start one polling task per node-local SQS source (`aws.sources`; their
/// status is not reported by the API, which shows shared sources).
pub fn spawn_local(cfg: &NodeConfig, ingest: &Ingest) {
    for src in &cfg.aws.sources {
        let credential = src
            .credential
            .as_ref()
            .and_then(|n| cfg.aws.credentials.get(n).cloned());
        let conn = connection(src, credential);
        tokio::spawn(poll_sqs(
            ingest.clone(),
            cfg.limits.clone(),
            src.clone(),
            conn,
            StatusCell::default(),
        ));
    }
}

/// The connection settings of an SQS source with its (resolved) credential.
pub fn connection(src: &AwsSource, credential: Option<AwsCredential>) -> Connection {
    Connection {
        region: src.region.clone(),
        endpoint: src.endpoint.clone(),
        credential,
        timeout: Some(Duration::from_secs(src.wait_time_secs as u64 + 10)),
        max_attempts: 1,
    }
}

/// Poll one SQS queue into `src.bus` until the task is aborted: receive,
/// convert, commit, then delete what was committed. Progress and the last
/// error go to `status`.
pub async fn poll_sqs(
    ingest: Ingest,
    limits: Limits,
    src: AwsSource,
    conn: Connection,
    status: StatusCell,
) {
    let name = src.name.clone();
    let mut client = SqsSource::connect(&conn, &src.queue_url).await;
    let mut backoff = Duration::from_millis(200);
    let grow = |b: Duration| (b * 2).min(Duration::from_secs(30));
    if src.provision {
        let p = Provision {
            event_bus: src.event_bus.clone(),
            rule_name: src
                .rule_name
                .clone()
                .unwrap_or_else(|| format!("strait-{name}")),
            event_pattern: src
                .event_pattern
                .clone()
                .unwrap_or_else(|| json!({"source": [{"prefix": ""}]})),
        };
        loop {
            match client.provision(&p).await {
                Ok(()) => {
                    tracing::info!(source = %name, queue = client.queue_url(), rule = %p.rule_name, "provisioned SQS queue and EventBridge rule");
                    break;
                }
                Err(e) => {
                    status.update(|s| s.last_error = Some(format!("provisioning failed: {e}")));
                    tracing::warn!(source = %name, error = %e, "provisioning failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = grow(backoff);
                }
            }
        }
        backoff = Duration::from_millis(200);
    }
    let delete_delay = std::env::var(DELETE_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let queue = client.queue_url().to_string();
    tracing::info!(source = %name, queue = %queue, bus = %src.bus, "SQS source started");
    loop {
        let msgs = match client
            .receive(
                src.max_messages,
                src.wait_time_secs,
                src.visibility_timeout_secs,
            )
            .await
        {
            Ok(m) => {
                backoff = Duration::from_millis(200);
                status.update(|s| {
                    s.last_error = None;
                    s.received += m.len() as u64;
                });
                m
            }
            Err(e) => {
                status.update(|s| s.last_error = Some(format!("SQS receive failed: {e}")));
                metrics::counter!("strait_aws_source_errors_total", "source" => name.clone())
                    .increment(1);
                tracing::warn!(source = %name, error = %e, "SQS receive failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = grow(backoff);
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        metrics::counter!("strait_aws_source_received_total", "source" => name.clone())
            .increment(msgs.len() as u64);
        // One entry per message, in order; the receipt of each valid one.
        let mut entries = Vec::with_capacity(msgs.len());
        let mut receipts = Vec::with_capacity(msgs.len());
        let mut ces = Vec::new();
        let mut mapped = Vec::new();
        let reject = |what: &str, id: &str, e: &dyn std::fmt::Display| {
            status.update(|s| s.rejected += 1);
            metrics::counter!("strait_aws_source_rejected_total", "source" => name.clone())
                .increment(1);
            tracing::warn!(source = %name, message_id = %id, error = %e, "{what}");
        };
        for m in &msgs {
            let ce = mapping::sqs_body_to_cloudevent(
                &m.body,
                &m.message_id,
                &queue,
                m.trace_header.as_deref(),
            )
            .and_then(|ce| serde_json::value::to_raw_value(&ce).map_err(|e| e.to_string()));
            match ce {
                Ok(ce) => {
                    mapped.push(entries.len());
                    ces.push(ce);
                }
                Err(e) => reject(
                    "SQS message is not a valid event; left on the queue (use a redrive policy)",
                    &m.message_id,
                    &e,
                ),
            }
            entries.push(Entry::Refused {
                bus: src.bus.clone(),
            });
            receipts.push(None);
        }
        for ((slot, (id, r)), m) in mapped
            .iter()
            .zip(parse_items(&ces, None, &limits))
            .map(|(slot, p)| (*slot, p))
            .zip(mapped.iter().map(|s| &msgs[*s]))
        {
            match r {
                Ok(p) => {
                    entries[slot] = p.into_entry(src.bus.clone());
                    receipts[slot] = Some(m.receipt_handle.clone());
                }
                Err(e) => reject(
                    "event from SQS is not a valid CloudEvent; left on the queue",
                    id.as_deref().unwrap_or(&m.message_id),
                    &e,
                ),
            }
        }
        let pending: Vec<String> = receipts.iter().flatten().cloned().collect();
        // While the commit runs, keep the messages invisible (extend at half
        // the visibility timeout), so a slow commit is not re-delivered.
        let commit = ingest.submit(entries);
        tokio::pin!(commit);
        let half = Duration::from_millis((src.visibility_timeout_secs as u64 * 500).max(500));
        let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let committed = loop {
            tokio::select! {
                r = &mut commit => break r,
                _ = extend.tick() => {
                    if let Err(e) = client.extend_visibility(&pending, src.visibility_timeout_secs).await {
                        tracing::warn!(source = %name, error = %e, "extending the visibility timeout failed");
                    }
                }
            }
        };
        let outcomes = match committed {
            Ok(o) => o,
            Err(e) => {
                status.update(|s| s.last_error = Some(format!("commit failed: {e}")));
                tracing::warn!(source = %name, error = %e, "commit failed; the messages become visible again after the visibility timeout");
                tokio::time::sleep(backoff).await;
                backoff = grow(backoff);
                continue;
            }
        };
        let mut delete = Vec::new();
        for (receipt, outcome) in receipts.into_iter().zip(outcomes) {
            let Some(receipt) = receipt else { continue };
            match outcome {
                Outcome::Accepted => {
                    status.update(|s| s.committed += 1);
                    delete.push(receipt);
                }
                Outcome::Duplicate => delete.push(receipt),
                Outcome::NoSuchBus | Outcome::Refused => {
                    status.update(|s| {
                        s.last_error = Some(format!(
                            "bus `{}` does not exist at this site; messages left on the queue",
                            src.bus
                        ))
                    });
                    tracing::warn!(source = %name, bus = %src.bus, "the source's bus does not exist; messages left on the queue");
                }
            }
        }
        if let Some(d) = delete_delay {
            // Fault injection (tests): delete later, off the polling loop.
            let client = client.clone();
            let name = name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                delete_committed(&client, &name, &delete).await;
            });
        } else {
            delete_committed(&client, &name, &delete).await;
        }
    }
}

/// Delete messages whose events are committed.
async fn delete_committed(client: &SqsSource, name: &str, receipts: &[String]) {
    match client.delete(receipts).await {
        Ok(n) => {
            metrics::counter!("strait_aws_source_deleted_total", "source" => name.to_string())
                .increment(n as u64);
        }
        Err(e) => {
            tracing::warn!(source = %name, error = %e, "SQS delete failed; the messages come back and are dropped as duplicates");
        }
    }
}
