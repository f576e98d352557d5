//! `strait dlq ls|redrive` (a target's dead letters, and sending them
//! again) and `strait target seek` (move a target's cursor to a time); see
//! docs/replay.md.

use anyhow::Context;
use serde_json::{Value, json};

use super::client::{api_error, client, get_json, send, with_auth};
use super::events::url;
use super::{DlqCommand, ServerArgs, TargetCommand};
use crate::redrive::{DeadLetterList, RedriveResult, SeekResult};

/// The rule path segments of `bus/rule` and (if given) `target`.
fn segments<'a>(bus: &'a str, rule: &'a str, target: Option<&'a str>) -> Vec<&'a str> {
    let mut s = vec!["v1", "buses", bus, "rules", rule];
    if let Some(t) = target {
        s.extend(["targets", t]);
    }
    s
}

async fn post(server: &ServerArgs, url: String, body: Value, what: &str) -> anyhow::Result<Value> {
    let (c, _) = client(server)?;
    let (status, body) = send(with_auth(c.post(url).json(&body), server), what).await?;
    if status != 200 {
        return Err(api_error(what, status, &body));
    }
    Ok(body)
}

pub(super) async fn dlq(c: DlqCommand) -> anyhow::Result<()> {
    match c {
        DlqCommand::Ls {
            server,
            bus,
            rule,
            target,
            limit,
            next,
            json,
        } => {
            let mut segs = segments(&bus, &rule, target.as_deref());
            segs.push("dead-letters");
            let mut query = vec![("limit", limit.to_string())];
            if let Some(n) = next {
                query.push(("next", n));
            }
            let u = url(&server, &segs, &query)?;
            let (c, _) = client(&server)?;
            let body = get_json(&c, &server, u, "dead letters").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let list: DeadLetterList =
                serde_json::from_value(body).context("dead letters: unexpected answer")?;
            out!("{}", table(&list));
        }
        DlqCommand::Redrive {
            server,
            bus,
            rule,
            target,
            all,
            to,
            ids,
        } => {
            if all != ids.is_empty() {
                anyhow::bail!("name the event ids to redrive, or give --all (not both)");
            }
            let mut body = if all {
                json!({"all": true})
            } else {
                json!({"ids": ids})
            };
            if let Some(t) = to {
                body["to"] = json!(t);
            }
            let mut segs = segments(&bus, &rule, Some(&target));
            segs.extend(["dead-letters", "redrive"]);
            let u = url(&server, &segs, &[])?;
            let v = post(&server, u, body, "redrive").await?;
            let r: RedriveResult =
                serde_json::from_value(v).context("redrive: unexpected answer")?;
            outln!("redriven to {}: {} event(s)", r.to, r.redriven.len());
            if !r.not_found.is_empty() {
                outln!("not dead letters of {target}: {}", r.not_found.join(", "));
            }
            if !r.gone.is_empty() {
                outln!("no longer stored (past retention): {}", r.gone.join(", "));
            }
            if r.more {
                outln!("more dead letters remain: run it again");
            }
        }
    }
    Ok(())
}

pub(super) async fn target(c: TargetCommand) -> anyhow::Result<()> {
    match c {
        TargetCommand::Seek {
            server,
            bus,
            rule,
            target,
            time,
            allow_partial,
        } => {
            let mut segs = segments(&bus, &rule, Some(&target));
            segs.push("seek");
            let u = url(&server, &segs, &[])?;
            let mut body = json!({"time": time});
            if allow_partial {
                body["allowPartial"] = json!(true);
            }
            let v = post(&server, u, body, "seek").await?;
            let r: SeekResult = serde_json::from_value(v).context("seek: unexpected answer")?;
            let how = if r.to <= r.from {
                "re-delivers"
            } else {
                "skips"
            };
            outln!(
                "{}: cursor {} -> {} ({}); {how} {} event(s)",
                r.target,
                r.from,
                r.to,
                r.time,
                r.events
            );
        }
    }
    Ok(())
}

/// The dead letters as a table.
pub(crate) fn table(l: &DeadLetterList) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<10} {:<14} {:>8}  {:<24} {:<10} REASON",
        "TIME", "TARGET", "STATUS", "ATTEMPTS", "ID", "REDRIVE"
    );
    for d in &l.dead_letters {
        let status = serde_json::to_value(d.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let redrive = d
            .redrives
            .iter()
            .map(|r| {
                serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(",");
        let redrive = if redrive.is_empty() {
            "-".into()
        } else {
            redrive
        };
        let _ = writeln!(
            s,
            "{:<24} {:<10} {:<14} {:>8}  {:<24} {:<10} {}",
            d.time,
            d.target,
            status,
            d.attempts,
            d.id,
            redrive,
            d.reason.as_deref().unwrap_or("")
        );
    }
    if let Some(n) = &l.next {
        let _ = writeln!(s, "more: --next {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_dead_letter_and_the_next_page() {
        let l: DeadLetterList = serde_json::from_value(json!({
            "deadLetters": [{"id": "e1", "source": "/s", "bus": "b", "rule": "r", "target": "t",
                "status": "dead-lettered", "reason": "retries exhausted; last error: HTTP 503",
                "attempts": 3, "ingestTime": "2026-01-01T00:00:00.000Z",
                "time": "2026-01-01T00:00:01.000Z", "attemptLog": [],
                "redrives": [{"site": "idc", "rule": "r", "target": "t", "status": "delivered",
                    "attempts": []}]}],
            "next": "12.ab"}))
        .expect("list");
        let t = table(&l);
        assert!(
            t.contains("e1") && t.contains("dead-lettered") && t.contains("HTTP 503"),
            "{t}"
        );
        assert!(t.contains("delivered"), "{t}");
        assert!(t.contains("--next 12.ab"), "{t}");
    }
}
