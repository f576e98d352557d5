//! One trace per event across three sites (`idc:3 + aliyun:1 + aws:1`),
//! decoded from the OTLP/HTTP protobuf the nodes export: events entering at
//! idc (the CloudEvents API, at a follower) and at aliyun (the Alibaba push
//! endpoint) and at aws (an SQS source, with an `AWSTraceHeader`), a rule with a target at each site, and a second rule whose
//! target at aws refuses (dead letter).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
use strait_chaos_tests::{Behavior, LocalCluster, Receiver, http_target, retry};

/// Event A's producer span.
const PRODUCER_TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "20f067aa0ba902b7";
/// The X-Ray context SQS hands with event E (`AWSTraceHeader`).
const XRAY_TRACE: &str = "5759e988bd862e3fe1be46a994272793";
const XRAY_PARENT: &str = "53995c3f42cd8ad8";

/// The sites of the cluster.
const ALL: &[&str] = &["idc", "aliyun", "aws"];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One exported span, decoded from OTLP protobuf.
#[derive(Clone)]
struct Span {
    site: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: i32,
    error: bool,
    /// String and integer attributes, as text.
    attrs: BTreeMap<String, String>,
}

impl Span {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} @{} kind {} id {} parent {} event {:?}{}",
            self.name,
            self.site,
            self.kind,
            hex(&self.id),
            hex(&self.parent),
            self.attr("cloudevents.event_id"),
            if self.error { " ERROR" } else { "" }
        )
    }
}

fn exported(collector: &Receiver) -> anyhow::Result<Vec<Span>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Any::StringValue(s)) => Some(s.clone()),
        Some(Any::IntValue(i)) => Some(i.to_string()),
        Some(Any::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    };
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
                .and_then(|kv| text(&kv.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        site: site.clone(),
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                        name: s.name,
                        kind: s.kind,
                        error: s.status.is_some_and(|st| st.code == 2),
                        attrs: s
                            .attributes
                            .iter()
                            .filter_map(|kv| Some((kv.key.clone(), text(&kv.value)?)))
                            .collect(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The traces holding spans about event `id`.
fn traces_of<'a>(spans: &'a [Span], id: &str) -> BTreeSet<&'a [u8]> {
    spans
        .iter()
        .filter(|s| s.attr("cloudevents.event_id") == Some(id))
        .map(|s| s.trace.as_slice())
        .collect()
}

/// The first span of `t` named `name` from `site`.
fn one_span<'a>(t: &[&'a Span], id: &str, name: &str, site: &str) -> anyhow::Result<&'a Span> {
    t.iter()
        .copied()
        .find(|s| s.name == name && s.site == site)
        .ok_or_else(|| anyhow::anyhow!("event {id}: no {name} span at {site}: {t:#?}"))
}

/// What one event's trace must hold once complete.
struct Expect {
    id: &'static str,
    origin: &'static str,
    /// Sites with a delivery.
    delivered_at: &'static [&'static str],
    dead_letter_at: Option<&'static str>,
    rules_matched: usize,
    /// The span outside Strait the trace continues (trace id, span id).
    external_parent: Option<(&'static str, &'static str)>,
}

impl Expect {
    fn remotes(&self) -> impl Iterator<Item = &&'static str> {
        self.delivered_at.iter().filter(|s| **s != self.origin)
    }

    /// Whether the event's spans are all exported (else which are missing).
    fn missing(&self, spans: &[Span]) -> Vec<String> {
        let ours: Vec<&Span> = spans
            .iter()
            .filter(|s| s.attr("cloudevents.event_id") == Some(self.id))
            .collect();
        let has = |name: &str, site: &str| ours.iter().any(|s| s.name == name && s.site == site);
        let mut missing = Vec::new();
        for (name, site) in [
            ("publish", self.origin),
            ("route", self.origin),
            ("link send", self.origin),
        ] {
            if !has(name, site) {
                missing.push(format!("{name}@{site}"));
            }
        }
        for site in self.delivered_at {
            if !has("deliver", site) {
                missing.push(format!("deliver@{site}"));
            }
        }
        for site in self.remotes() {
            for name in ["inbox commit", "receive"] {
                if !has(name, site) {
                    missing.push(format!("{name}@{site}"));
                }
            }
        }
        if let Some(site) = self.dead_letter_at
            && !has("dead-letter", site)
        {
            missing.push(format!("dead-letter@{site}"));
        }
        missing
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_entering_at_idc_and_aliyun_are_one_trace_across_three_sites() -> anyhow::Result<()>
{
    strait_chaos_tests::bounded(Duration::from_secs(240), async {
        let collector = Receiver::start(Behavior::Ok).await?;
        let targets: BTreeMap<&str, Receiver> = [
            ("idc", Receiver::start(Behavior::Ok).await?),
            ("aliyun", Receiver::start(Behavior::Ok).await?),
            ("aws", Receiver::start(Behavior::Ok).await?),
        ]
        .into_iter()
        .collect();
        let refusing = Receiver::start(Behavior::Status(400)).await?;
        let moto = strait_chaos_tests::Moto::start().await?;
        let queue = moto.create_queue("three-sites").await?;
        let c = LocalCluster::up(
            &[("idc", 3), ("aliyun", 1), ("aws", 1)],
            Some(json!({
                "telemetry": {"otlp_endpoint": collector.url("/v1/traces")},
                "dispatch": {"checkpoint_interval_ms": 50},
                "alibaba": {"push": {"require_signature": false}},
                "aws": {"credentials": {"main": {"access_key_id": "testing", "secret_access_key": "testing"}}},
            })),
        )
        .await?;
        let idc_nodes = c.site_nodes("idc");
        let idc = c.client_at(idc_nodes[0])?;
        let mut tree_targets = Vec::new();
        for (site, r) in &targets {
            let mut t = http_target(&format!("to-{site}"), &r.url("/hook"), retry(100, 20, 200));
            t["site"] = json!(site);
            tree_targets.push(t);
        }
        let mut refuses = http_target("refuses", &refusing.url("/no"), retry(2, 20, 100));
        refuses["site"] = json!("aws");
        // The control group may take a moment to elect: retry the PUTs.
        let deadline = Instant::now() + Duration::from_secs(60);
        for (name, spec) in [
            (
                "tree",
                json!({"pattern": {"source": [{"prefix": "/three"}]}, "targets": tree_targets}),
            ),
            (
                "dlq",
                json!({"pattern": {"source": ["/three/dlq"]}, "targets": [refuses]}),
            ),
        ] {
            loop {
                let r = idc.put_rule("default", name, &spec).await?;
                if r.status == 200 {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "PUT rule {name}: {} {}",
                    r.status,
                    r.text()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        // E arrives through an SQS source at aws.
        let source = json!({
            "type": "aws_sqs", "site": "aws", "bus": "default", "queueUrl": queue,
            "credential": "main", "region": "us-east-1", "endpoint": moto.url(),
            "waitTimeSecs": 1, "visibilityTimeoutSecs": 30, "maxMessages": 10
        });
        idc.send_json(reqwest::Method::PUT, "/v1/sources/three-q", &source)
            .await?
            .expect_status(200, "PUT source")?;
        // Both rules at every node of every site before the events.
        for i in 0..c.nodes.len() {
            let n = c.client_at(i)?;
            for rule in ["tree", "dlq"] {
                while n.get_rule("default", rule).await?.status != 200 {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "rule {rule} never reached {}-{}",
                        c.nodes[i].site,
                        c.nodes[i].id
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }

        // A: at an idc node (any; a follower forwards the commit) with the
        // producer's trace.
        c.client_at(idc_nodes[idc_nodes.len() - 1])?
            .post_structured(
                "default",
                &json!({
                    "specversion": "1.0", "id": "three-a", "source": "/three/idc", "type": "t",
                    "traceparent": format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"),
                    "data": {"x": 1},
                }),
            )
            .await?
            .expect_status(200, "POST event A at idc")?;
        // B: at aliyun, pushed as an Alibaba EventBridge HTTP target does,
        // without trace context: its trace starts at the push request.
        let aliyun = c.client_at(c.site_nodes("aliyun")[0])?;
        aliyun
            .send_json(
                reqwest::Method::POST,
                "/alibaba/push/default",
                &json!({"specversion": "1.0", "id": "three-b", "source": "/three/aliyun", "type": "t", "data": {"y": 2}}),
            )
            .await?
            .expect_status(200, "push event B at aliyun")?;
        // D: at idc, matching both rules: dead-lettered at aws.
        idc.post_structured(
            "default",
            &json!({"specversion": "1.0", "id": "three-d", "source": "/three/dlq", "type": "t"}),
        )
        .await?
        .expect_status(200, "POST event D at idc")?;
        moto.sqs(
            "SendMessage",
            json!({
                "QueueUrl": queue,
                "MessageBody": json!({"specversion": "1.0", "id": "three-e", "source": "/three/sqs", "type": "t"}).to_string(),
                "MessageSystemAttributes": {"AWSTraceHeader": {
                    "DataType": "String",
                    "StringValue": format!("Root=1-{}-{};Parent={XRAY_PARENT};Sampled=1", &XRAY_TRACE[..8], &XRAY_TRACE[8..]),
                }},
            }),
        )
        .await?;

        let expects = [
            Expect {
                id: "three-a",
                origin: "idc",
                delivered_at: ALL,
                dead_letter_at: None,
                rules_matched: 1,
                external_parent: Some((PRODUCER_TRACE, PRODUCER_SPAN)),
            },
            Expect {
                id: "three-b",
                origin: "aliyun",
                delivered_at: ALL,
                dead_letter_at: None,
                rules_matched: 1,
                external_parent: None,
            },
            Expect {
                id: "three-d",
                origin: "idc",
                delivered_at: ALL,
                dead_letter_at: Some("aws"),
                rules_matched: 2,
                external_parent: None,
            },
            Expect {
                id: "three-e",
                origin: "aws",
                delivered_at: ALL,
                dead_letter_at: None,
                rules_matched: 1,
                external_parent: Some((XRAY_TRACE, XRAY_PARENT)),
            },
        ];
        for (site, r) in &targets {
            r.wait_until(
                &format!("the four events delivered at {site}"),
                Duration::from_secs(60),
                |reqs| reqs.len() >= 4,
            )
            .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let spans = loop {
            let spans = exported(&collector)?;
            let missing: Vec<(&str, Vec<String>)> = expects
                .iter()
                .map(|e| (e.id, e.missing(&spans)))
                .filter(|(_, m)| !m.is_empty())
                .collect();
            if missing.is_empty() {
                // The last exports of the other spans of these traces.
                tokio::time::sleep(Duration::from_millis(800)).await;
                break exported(&collector)?;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "spans never exported: {missing:?}; exported: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };

        let ids: HashSet<&[u8]> = spans.iter().map(|s| s.id.as_slice()).collect();
        for e in &expects {
            let traces = traces_of(&spans, e.id);
            anyhow::ensure!(
                traces.len() == 1,
                "event {} is in {} traces: {:#?}",
                e.id,
                traces.len(),
                spans
                    .iter()
                    .filter(|s| s.attr("cloudevents.event_id") == Some(e.id))
                    .collect::<Vec<_>>()
            );
            let trace = traces.into_iter().next().unwrap_or_default();
            let t: Vec<&Span> = spans.iter().filter(|s| s.trace == trace).collect();
            // No orphans: every parent is an exported span of the trace or
            // the producer's span.
            for s in &t {
                let parent_in_trace = t.iter().any(|p| p.id == s.parent);
                anyhow::ensure!(
                    s.parent.is_empty()
                        || parent_in_trace
                        || e.external_parent.is_some_and(|(trace_id, span)| {
                            hex(trace) == trace_id && hex(&s.parent) == span
                        }),
                    "event {}: span {s:?} has a parent no exported span of its trace has (exported anywhere: {}): {t:#?}",
                    e.id,
                    ids.contains(s.parent.as_slice())
                );
                anyhow::ensure!(
                    ALL.contains(&s.site.as_str()),
                    "span {s:?} carries no site of the cluster"
                );
            }
            let sites: BTreeSet<&str> = t.iter().map(|s| s.site.as_str()).collect();
            anyhow::ensure!(
                sites == ALL.iter().copied().collect::<BTreeSet<_>>(),
                "event {}: spans from sites {sites:?}, not all three: {t:#?}",
                e.id
            );
            let one = |name: &str, site: &str| one_span(&t, e.id, name, site);
            let publish = one("publish", e.origin)?;
            anyhow::ensure!(publish.kind == 4, "publish is a PRODUCER span");
            let route = one("route", e.origin)?;
            anyhow::ensure!(
                route.parent == publish.id,
                "route is a child of publish: {t:#?}"
            );
            anyhow::ensure!(
                route.attr("strait.rules.matched") == Some(&e.rules_matched.to_string()),
                "event {}: route matched {:?} rules, expected {}",
                e.id,
                route.attr("strait.rules.matched"),
                e.rules_matched
            );
            anyhow::ensure!(
                route.attr("messaging.destination.name") == Some("default"),
                "route names the bus: {route:?}"
            );
            // The link hop: `link send` at the origin, then at each remote
            // site `inbox commit` and `receive` as its children, and the
            // remote delivery under `receive`.
            for remote in e.remotes() {
                let target = format!("to-{remote}");
                let send = t
                    .iter()
                    .find(|s| {
                        s.name == "link send"
                            && s.site == e.origin
                            && s.attr("strait.target") == Some(&target)
                    })
                    .ok_or_else(|| {
                        anyhow::anyhow!("event {}: no link send to {remote}: {t:#?}", e.id)
                    })?;
                anyhow::ensure!(send.parent == publish.id, "link send is under publish");
                for (name, kind) in [("inbox commit", 1), ("receive", 5)] {
                    anyhow::ensure!(
                        t.iter().any(|s| s.name == name
                            && s.site == *remote
                            && s.kind == kind
                            && s.parent == send.id),
                        "event {}: no {name} at {remote} under the link send to it: {t:#?}",
                        e.id
                    );
                }
                let receive_ids: Vec<&[u8]> = t
                    .iter()
                    .filter(|s| s.name == "receive" && s.site == *remote)
                    .map(|s| s.id.as_slice())
                    .collect();
                anyhow::ensure!(
                    t.iter().any(|s| s.name == "deliver"
                        && s.site == *remote
                        && receive_ids.contains(&s.parent.as_slice())),
                    "event {}: the delivery at {remote} is not under its receive: {t:#?}",
                    e.id
                );
            }
            let local = one("deliver", e.origin)?;
            anyhow::ensure!(
                local.parent == publish.id && local.kind == 3,
                "the local HTTP delivery is a CLIENT child of publish: {local:?}"
            );
            match e.dead_letter_at {
                Some(site) => {
                    let dl = one("dead-letter", site)?;
                    anyhow::ensure!(dl.error, "the dead letter has status Error: {dl:?}");
                    anyhow::ensure!(
                        t.iter()
                            .any(|s| s.name == "deliver" && s.site == site && s.error),
                        "the refused attempts are errors: {t:#?}"
                    );
                }
                None => anyhow::ensure!(
                    !t.iter().any(|s| s.name == "dead-letter"),
                    "event {} was not dead-lettered: {t:#?}",
                    e.id
                ),
            }
        }

        // A continues the producer's trace.
        let a = traces_of(&spans, "three-a");
        anyhow::ensure!(
            a.iter().all(|t| hex(t) == PRODUCER_TRACE),
            "event A left the producer's trace"
        );
        // B's trace starts at aliyun's push request (SERVER), and B's
        // publish is its child.
        let b_trace = traces_of(&spans, "three-b")
            .into_iter()
            .next()
            .unwrap_or_default();
        let push = spans
            .iter()
            .find(|s| s.trace == b_trace && s.kind == 2)
            .ok_or_else(|| anyhow::anyhow!("no SERVER span in event B's trace"))?;
        anyhow::ensure!(
            push.name == "POST /alibaba/push/{bus}"
                && push.site == "aliyun"
                && push.parent.is_empty()
                && push.attr("http.response.status_code") == Some("200"),
            "event B's trace starts at the push request: {push:?}"
        );
        anyhow::ensure!(
            spans.iter().any(|s| s.trace == b_trace
                && s.name == "publish"
                && s.parent == push.id),
            "event B's publish is a child of the push request"
        );
        // E continues the message's X-Ray trace through the source's
        // CONSUMER span at aws, which its publish span is a child of.
        let e_trace = traces_of(&spans, "three-e")
            .into_iter()
            .next()
            .unwrap_or_default();
        anyhow::ensure!(hex(e_trace) == XRAY_TRACE, "event E left the X-Ray trace");
        let consumed = spans
            .iter()
            .find(|s| s.trace == e_trace && s.name == "receive" && s.attr("strait.source").is_some())
            .ok_or_else(|| anyhow::anyhow!("no source receive span for event E"))?;
        anyhow::ensure!(
            consumed.kind == 5
                && consumed.site == "aws"
                && hex(&consumed.parent) == XRAY_PARENT
                && consumed.attr("messaging.system") == Some("aws_sqs")
                && consumed.attr("strait.source") == Some("three-q"),
            "the source's receive span: {consumed:?}"
        );
        anyhow::ensure!(
            spans.iter().any(|s| s.trace == e_trace
                && s.name == "publish"
                && s.parent == consumed.id),
            "event E's publish is a child of the source's receive"
        );
        c.ensure_no_panic()?;
        Ok(())
    })
    .await
}
