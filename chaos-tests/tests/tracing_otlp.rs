//! One trace per event: with an OTLP endpoint configured, the node exports
//! its delivery spans inside the producer's trace, and the HTTP
//! `traceparent` a target receives names the exported delivery span.

use std::time::Duration;

use serde_json::json;
use strait_chaos_tests::{Behavior, NodeOptions, Receiver, StraitProcess, http_target, retry};

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_spans_are_exported_in_the_producers_trace() -> anyhow::Result<()> {
    let collector = Receiver::start(Behavior::Ok).await?;
    let target = Receiver::start(Behavior::Ok).await?;
    let node = StraitProcess::start(
        NodeOptions::dev()
            .config(json!({"telemetry": {"otlp_endpoint": collector.url("/v1/traces")}}))
            .env("OTEL_BSP_SCHEDULE_DELAY", "200"),
    )
    .await?;
    node.put_rule(
        "default",
        "traced",
        &json!({
            "pattern": {"source": ["/otlp-test"]},
            "targets": [http_target("t", &target.url("/hook"), retry(3, 50, 200))],
        }),
    )
    .await?
    .expect_status(200, "PUT rule")?;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let event = json!({
        "specversion": "1.0", "id": "otlp-1", "source": "/otlp-test", "type": "t",
        "traceparent": format!("00-{trace_id}-00f067aa0ba902b7-01"),
        "data": {"x": 1},
    });
    node.post_structured("default", &event)
        .await?
        .expect_status(200, "POST event")?;

    target
        .wait_until("the delivery", Duration::from_secs(20), |r| !r.is_empty())
        .await?;
    let delivery = target.requests().remove(0);
    let header = delivery
        .header("traceparent")
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("delivery has no HTTP traceparent header"))?;
    let parts: Vec<&str> = header.split('-').collect();
    anyhow::ensure!(parts.len() == 4, "bad traceparent {header}");
    anyhow::ensure!(
        parts[1] == trace_id,
        "delivery left the producer's trace: {header}"
    );
    assert_eq!(
        delivery.header("ce-traceparent"),
        Some(format!("00-{trace_id}-00f067aa0ba902b7-01").as_str()),
        "the event's own traceparent travels unchanged"
    );

    // The exporter batches; wait for a protobuf export carrying both the trace
    // id and the delivery span's id (raw bytes in the OTLP message).
    let trace_bytes = hex_bytes(trace_id);
    let span_bytes = hex_bytes(parts[2]);
    collector
        .wait_until(
            "an OTLP export with the delivery span",
            Duration::from_secs(30),
            |reqs| {
                reqs.iter().any(|r| {
                    r.path == "/v1/traces"
                        && contains(&r.body, &trace_bytes)
                        && contains(&r.body, &span_bytes)
                        && contains(&r.body, b"deliver")
                })
            },
        )
        .await?;
    Ok(())
}
