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

/// One exported span, decoded from OTLP protobuf.
#[derive(Clone)]
struct ExportedSpan {
    site: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: i32,
    error: bool,
    keys: Vec<String>,
}

impl std::fmt::Debug for ExportedSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        write!(
            f,
            "{} @{} kind {} id {} parent {}{}",
            self.name,
            self.site,
            self.kind,
            hex(&self.id),
            hex(&self.parent),
            if self.error { " ERROR" } else { "" }
        )
    }
}

fn exported_spans(collector: &Receiver) -> anyhow::Result<Vec<ExportedSpan>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;
    let mut out = Vec::new();
    for r in collector.requests() {
        if r.path != "/v1/traces" {
            continue;
        }
        let req = ExportTraceServiceRequest::decode(r.body.as_ref())?;
        for rs in req.resource_spans {
            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let site = attrs
                .iter()
                .find(|kv| kv.key == "strait.site")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .and_then(|v| match v {
                    Any::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ExportedSpan {
                        site: site.clone(),
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                        name: s.name,
                        kind: s.kind,
                        error: s.status.is_some_and(|st| st.code == 2),
                        keys: s.attributes.into_iter().map(|kv| kv.key).collect(),
                    });
                }
            }
        }
    }
    Ok(out)
}

async fn wait_leader(c: &strait_chaos_tests::LocalCluster) -> anyhow::Result<()> {
    for id in c.ids() {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = c.status(id).await.unwrap_or_default();
            if v["role"] == json!("leader") {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "node {id} is not its one-node site's leader"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Two sites: events entering at idc (one with the producer's trace, one
/// without any, in a batch) with a target at idc, one at aws (over the
/// link) and one that refuses (dead letter). Each event's spans form one
/// connected tree in one trace: every parent is an exported span or the
/// producer's; the spans carry the site that produced them; the link hop
/// (`link send` at idc, `receive` at aws) is there; the dead letter is an
/// error; span kinds are SERVER/PRODUCER/CLIENT/CONSUMER; no subscriber
/// internals are exported.
#[tokio::test(flavor = "multi_thread")]
async fn each_event_is_one_connected_trace_across_sites() -> anyhow::Result<()> {
    strait_chaos_tests::bounded(Duration::from_secs(120), async {
        let collector = Receiver::start(Behavior::Ok).await?;
        let local = Receiver::start(Behavior::Ok).await?;
        let remote = Receiver::start(Behavior::Ok).await?;
        let refusing = Receiver::start(Behavior::Status(400)).await?;
        let c = strait_chaos_tests::LocalCluster::up(
            &[("idc", 1), ("aws", 1)],
            Some(json!({
                "telemetry": {"otlp_endpoint": collector.url("/v1/traces")},
                "dispatch": {"checkpoint_interval_ms": 50},
            })),
        )
        .await?;
        wait_leader(&c).await?;
        let idc = c.client_at(*c.site_nodes("idc").first().unwrap_or(&0))?;
        let mut to_aws = http_target("to-aws", &remote.url("/aws"), retry(100, 20, 200));
        to_aws["site"] = json!("aws");
        idc.put_rule(
            "default",
            "tree",
            &json!({
                "pattern": {"source": ["/trace-tree"]},
                "targets": [
                    http_target("here", &local.url("/idc"), retry(100, 20, 200)),
                    to_aws,
                    http_target("refuses", &refusing.url("/no"), retry(3, 20, 100)),
                ],
            }),
        )
        .await?
        .expect_status(200, "PUT rule")?;

        let producer_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
        let producer_span = "10f067aa0ba902b7";
        idc.post_structured(
            "default",
            &json!({
                "specversion": "1.0", "id": "tree-a", "source": "/trace-tree", "type": "t",
                "traceparent": format!("00-{producer_trace}-{producer_span}-01"),
                "data": {"x": 1},
            }),
        )
        .await?
        .expect_status(200, "POST event with a producer trace")?;
        idc.post_batch(
            "default",
            &[json!({"specversion": "1.0", "id": "tree-b", "source": "/trace-tree", "type": "t"})],
        )
        .await?
        .expect_status(200, "POST batch without trace context")?;

        for (r, what) in [(&local, "idc"), (&remote, "aws")] {
            r.wait_until(
                &format!("both events delivered at {what}"),
                Duration::from_secs(30),
                |reqs| reqs.len() >= 2,
            )
            .await?;
        }
        let expected = ["publish", "deliver", "link send", "receive", "dead-letter"];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (spans, traces) = loop {
            let spans = exported_spans(&collector)?;
            let mut traces: std::collections::BTreeMap<Vec<u8>, Vec<ExportedSpan>> =
                Default::default();
            for s in &spans {
                traces.entry(s.trace.clone()).or_default().push(s.clone());
            }
            let complete = traces
                .values()
                .filter(|t| {
                    expected.iter().all(|n| t.iter().any(|s| s.name == *n))
                        && t.iter().filter(|s| s.name == "deliver").count() >= 3
                })
                .count();
            if complete >= 2 {
                break (spans, traces);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "not every stage exported for both events: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ids: std::collections::HashSet<&[u8]> = spans.iter().map(|s| s.id.as_slice()).collect();
        let producer = hex_bytes(producer_span);
        for (trace, t) in &traces {
            for s in t {
                anyhow::ensure!(
                    s.parent.is_empty()
                        || ids.contains(s.parent.as_slice())
                        || s.parent == producer,
                    "span {:?} at {} in trace {} has a parent no exported span has: {t:#?}",
                    s.name,
                    s.site,
                    trace.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                anyhow::ensure!(
                    !s.keys.iter().any(|k| [
                        "code.file.path",
                        "code.filepath",
                        "thread.name",
                        "thread.id",
                        "busy_ns",
                        "idle_ns"
                    ]
                    .contains(&k.as_str())),
                    "span {:?} exports subscriber internals: {:?}",
                    s.name,
                    s.keys
                );
                anyhow::ensure!(!s.site.is_empty(), "span {:?} names no site", s.name);
            }
            if !t.iter().any(|s| s.name == "publish") {
                // The request span of event A's POST: its own trace, linked
                // to the event's.
                continue;
            }
            let site_of = |name: &str| -> Vec<&str> {
                t.iter()
                    .filter(|s| s.name == name)
                    .map(|s| s.site.as_str())
                    .collect()
            };
            anyhow::ensure!(site_of("publish") == ["idc"], "publish: {t:#?}");
            anyhow::ensure!(
                site_of("link send").iter().all(|s| *s == "idc"),
                "link send: {t:#?}"
            );
            anyhow::ensure!(
                site_of("receive").iter().all(|s| *s == "aws"),
                "receive: {t:#?}"
            );
            anyhow::ensure!(
                site_of("deliver").contains(&"aws") && site_of("deliver").contains(&"idc"),
                "deliveries at both sites: {t:#?}"
            );
            let kind = |name: &str| t.iter().find(|s| s.name == name).map(|s| s.kind);
            // OTLP span kinds: 2 SERVER, 3 CLIENT, 4 PRODUCER, 5 CONSUMER.
            anyhow::ensure!(kind("publish") == Some(4), "publish is a PRODUCER span");
            anyhow::ensure!(
                kind("deliver") == Some(3),
                "an HTTP delivery is a CLIENT span"
            );
            anyhow::ensure!(kind("receive") == Some(5), "receive is a CONSUMER span");
            anyhow::ensure!(
                t.iter().any(|s| s.name == "dead-letter" && s.error),
                "the dead letter has status Error: {t:#?}"
            );
        }
        let a = traces
            .get(&hex_bytes(producer_trace))
            .ok_or_else(|| anyhow::anyhow!("no spans in the producer's trace"))?;
        anyhow::ensure!(
            a.iter()
                .any(|s| s.name == "publish" && s.parent == producer),
            "event A's publish span is a child of the producer's span"
        );
        anyhow::ensure!(
            traces
                .values()
                .any(|t| t.iter().any(|s| s.kind == 2 && s.parent.is_empty())),
            "event B's trace starts at the request's SERVER span"
        );
        // What the targets received names exported delivery spans.
        for r in [&local, &remote] {
            for req in r.requests() {
                let tp = req.header("traceparent").unwrap_or_default().to_string();
                let span = hex_bytes(tp.split('-').nth(2).unwrap_or(""));
                anyhow::ensure!(
                    spans.iter().any(|s| s.id == span && s.name == "deliver"),
                    "a target received traceparent {tp}, which names no exported delivery span"
                );
            }
        }
        c.ensure_no_panic()?;
        Ok(())
    })
    .await
}

/// With the collector down, ingest answers as usual and the spans that
/// could not be exported are counted as dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_spans_not_events() -> anyhow::Result<()> {
    // A port nothing listens on.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}/v1/traces", l.local_addr()?)
    };
    let node = StraitProcess::start(
        NodeOptions::dev()
            .config(json!({"telemetry": {"otlp_endpoint": down}}))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await?;
    for b in 0..5 {
        let events: Vec<serde_json::Value> = (0..20)
            .map(|i| json!({"specversion": "1.0", "id": format!("down-{b}-{i}"), "source": "/down", "type": "t"}))
            .collect();
        node.post_batch("default", &events)
            .await?
            .expect_status(200, "POST batch with the collector down")?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = node.get_json("/metrics").await?.text();
        let dropped: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("strait_trace_spans_dropped_total") && l.contains("export_failed")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        // 100 publish spans and 5 request spans.
        if dropped >= 105.0 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "spans not counted as dropped ({dropped}):\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
