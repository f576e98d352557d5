//! `strait events get` (one event's deliveries as a text waterfall) and
//! `strait events ls` (a bus's events, paged).

use anyhow::Context;

use super::client::{client, get_json};
use super::{EventsCommand, ServerArgs};
use crate::lookup::{EventList, Lookup};

pub(super) async fn run(c: EventsCommand) -> anyhow::Result<()> {
    match c {
        EventsCommand::Get {
            server,
            bus,
            source,
            json,
            id,
        } => {
            let mut query = Vec::new();
            if let Some(s) = source {
                query.push(("source", s));
            }
            let url = url(&server, &["v1", "buses", &bus, "events", &id], &query)?;
            let body = fetch(&server, url, "event lookup").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let lookup: Lookup =
                serde_json::from_value(body).context("event lookup: unexpected answer")?;
            out!("{}", waterfall(&lookup));
        }
        EventsCommand::Ls {
            server,
            bus,
            source,
            event_type,
            since,
            until,
            limit,
            cursor,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("source", source),
                ("type", event_type),
                ("since", since),
                ("until", until),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let url = url(&server, &["v1", "buses", &bus, "events"], &query)?;
            let body = fetch(&server, url, "event list").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let list: EventList =
                serde_json::from_value(body).context("event list: unexpected answer")?;
            out!("{}", event_table(&list));
        }
    }
    Ok(())
}

/// The API URL of `segments` (each percent-encoded) with `query`.
pub(super) fn url(
    server: &ServerArgs,
    segments: &[&str],
    query: &[(&str, String)],
) -> anyhow::Result<String> {
    let base = server.server.trim_end_matches('/').to_string();
    let mut u = reqwest::Url::parse(&base).with_context(|| format!("--server {base:?}"))?;
    u.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--server {base:?} cannot be a base URL"))?
        .pop_if_empty()
        .extend(segments);
    if !query.is_empty() {
        u.query_pairs_mut().extend_pairs(query);
    }
    Ok(u.to_string())
}

async fn fetch(server: &ServerArgs, url: String, what: &str) -> anyhow::Result<serde_json::Value> {
    let (c, _) = client(server)?;
    get_json(&c, server, url, what).await
}

fn ms_of(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One line of the timeline.
struct Row {
    site: String,
    stage: String,
    offset_ms: Option<i64>,
    outcome: String,
}

/// Width of the waterfall's bar column.
const BAR: usize = 24;

/// The lookup as text: a header, then one row per stage (the commit, each
/// attempt, each delivery's end) with its site, its time since the commit
/// and a bar placing it in the event's life.
pub(crate) fn waterfall(l: &Lookup) -> String {
    use std::fmt::Write as _;
    let attr = |k: &str| {
        l.event
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let start = ms_of(&l.ingest_time);
    let mut rows = vec![Row {
        site: l.site.clone(),
        stage: "committed".into(),
        offset_ms: Some(0),
        outcome: format!("sequence {}", l.sequence),
    }];
    for d in &l.deliveries {
        let stage = format!("{} -> {}", d.rule, d.target);
        for (n, a) in d.attempts.iter().enumerate() {
            let mut outcome = match a.outcome {
                strait_federation::journal::AttemptOutcome::Delivered => "delivered".to_string(),
                strait_federation::journal::AttemptOutcome::Failed => "failed".to_string(),
            };
            if let Some(s) = a.http_status {
                outcome.push_str(&format!(" (HTTP {s})"));
            }
            if let Some(e) = &a.error {
                outcome.push_str(&format!(": {e}"));
            }
            let number = if n >= 5 && d.omitted_attempts > 0 {
                n as u32 + 1 + d.omitted_attempts
            } else {
                n as u32 + 1
            };
            rows.push(Row {
                site: d.site.clone(),
                stage: format!("{stage} attempt {number}"),
                offset_ms: start.zip(ms_of(&a.time)).map(|(s, t)| t - s),
                outcome,
            });
        }
        let last = d.attempts.last().map(|a| a.time.as_str());
        let status = serde_json::to_value(d.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let settled = matches!(
            d.status,
            strait_federation::journal::DeliveryStatus::Delivered
        ) && d
            .attempts
            .last()
            .is_some_and(|a| a.outcome == strait_federation::journal::AttemptOutcome::Delivered);
        if !settled {
            rows.push(Row {
                site: d.site.clone(),
                stage,
                offset_ms: start.zip(last.and_then(ms_of)).map(|(s, t)| t - s),
                outcome: match &d.reason {
                    Some(r) => format!("{status}: {r}"),
                    None => status,
                },
            });
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event {} (source {}, type {}) on bus {}",
        attr("id"),
        attr("source"),
        attr("type"),
        l.bus
    );
    let _ = writeln!(
        out,
        "entered at site {} at {}; trace {}",
        l.site, l.ingest_time, l.trace_id
    );
    if l.deliveries.is_empty() {
        let _ = writeln!(out, "no enabled rule of the bus matches it");
    }
    if !l.unreachable_sites.is_empty() {
        let _ = writeln!(
            out,
            "sites that did not answer: {}",
            l.unreachable_sites.join(", ")
        );
    }
    let _ = writeln!(out);
    let max = rows
        .iter()
        .filter_map(|r| r.offset_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let site_w = rows.iter().map(|r| r.site.len()).max().unwrap_or(4).max(4);
    let stage_w = rows.iter().map(|r| r.stage.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "{:site_w$}  {:stage_w$}  {:>10}  {:BAR$}  OUTCOME",
        "SITE", "STAGE", "OFFSET", ""
    );
    for r in rows {
        let (offset, bar) = match r.offset_ms {
            Some(ms) => {
                let at = (ms.max(0) as usize * (BAR - 1)) / max as usize;
                (
                    format!("+{}", human_ms(ms)),
                    format!("{}*{}", " ".repeat(at), " ".repeat(BAR - 1 - at)),
                )
            }
            None => ("-".to_string(), " ".repeat(BAR)),
        };
        let _ = writeln!(
            out,
            "{:site_w$}  {:stage_w$}  {:>10}  {bar}  {}",
            r.site, r.stage, offset, r.outcome
        );
    }
    out
}

/// `ms` as `12ms`, `1.5s` or `3m04s`.
fn human_ms(ms: i64) -> String {
    if ms.abs() < 1000 {
        format!("{ms}ms")
    } else if ms.abs() < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A page of events as a table, with the command for the next page.
pub(crate) fn event_table(list: &EventList) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>10}  {:24}  {:24}  {:24}  TYPE",
        "SEQUENCE", "COMMITTED", "ID", "SOURCE"
    );
    for e in &list.events {
        let _ = writeln!(
            out,
            "{:>10}  {:24}  {:24}  {:24}  {}",
            e.sequence, e.ingest_time, e.id, e.source, e.event_type
        );
    }
    if list.events.is_empty() {
        let _ = writeln!(out, "(no events)");
    }
    if let Some(c) = &list.next_cursor {
        let _ = writeln!(out, "more: --cursor {c}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::{AttemptView, DeliveryView};
    use strait_federation::journal::{AttemptOutcome, DeliveryStatus};

    #[test]
    fn the_waterfall_shows_each_stage_with_its_offset() {
        let l = Lookup {
            event: serde_json::json!({"id": "e1", "source": "/s", "type": "t"}),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            site: "idc".into(),
            bus: "b".into(),
            sequence: 7,
            ingest_time: "2026-01-01T00:00:00.000Z".into(),
            ingest_ms: 1_767_225_600_000,
            deliveries: vec![
                DeliveryView {
                    site: "idc".into(),
                    rule: "r".into(),
                    target: "web".into(),
                    status: DeliveryStatus::DeadLettered,
                    attempts: vec![AttemptView {
                        time: "2026-01-01T00:00:01.500Z".into(),
                        outcome: AttemptOutcome::Failed,
                        http_status: Some(503),
                        error: Some("busy".into()),
                    }],
                    omitted_attempts: 0,
                    reason: Some("retries exhausted".into()),
                },
                DeliveryView {
                    site: "aws".into(),
                    rule: "r".into(),
                    target: "far".into(),
                    status: DeliveryStatus::InTransit,
                    attempts: vec![],
                    omitted_attempts: 0,
                    reason: None,
                },
            ],
            redrives: Vec::new(),
            unreachable_sites: vec!["aws".into()],
        };
        let text = waterfall(&l);
        assert!(
            text.contains("event e1 (source /s, type t) on bus b"),
            "{text}"
        );
        assert!(text.contains("sites that did not answer: aws"), "{text}");
        let attempt = text
            .lines()
            .find(|l| l.contains("r -> web attempt 1"))
            .unwrap_or_default();
        assert!(
            attempt.starts_with("idc")
                && attempt.contains("+1.5s")
                && attempt.contains("failed (HTTP 503): busy"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("+1.5s") && l.ends_with("dead-lettered: retries exhausted")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("aws") && l.contains(" - ") && l.ends_with("in-transit")),
            "{text}"
        );
    }
}
