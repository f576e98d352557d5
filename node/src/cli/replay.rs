//! `strait archive put|get|ls|rm` and `strait replay start|status|ls|cancel`
//! (see docs/replay.md): clients of `/v1/buses/{bus}/archives` and
//! `/v1/replays`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::ServerArgs;
use super::client::{api_error, client, send, with_auth};

/// `strait archive ...`.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Create an archive of a bus, or change its settings.
    Put {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus.
        #[arg(long, default_value = "default")]
        bus: String,
        /// Only events matching this event pattern (JSON) are archived.
        #[arg(long)]
        pattern: Option<String>,
        /// ... or the pattern read from this file.
        #[arg(long, conflicts_with = "pattern")]
        pattern_file: Option<PathBuf>,
        /// Days archived events are kept (0: forever).
        #[arg(long, default_value_t = 0)]
        retention_days: u64,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Archive name.
        name: String,
    },
    /// One archive: settings, event count, size.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus.
        #[arg(long, default_value = "default")]
        bus: String,
        /// Archive name.
        name: String,
    },
    /// A bus's archives.
    Ls {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus.
        #[arg(long, default_value = "default")]
        bus: String,
    },
    /// Delete an archive and its events.
    Rm {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus.
        #[arg(long, default_value = "default")]
        bus: String,
        /// Archive name.
        name: String,
    },
}

/// `strait replay ...`.
#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Send an archive's events of [start, end) through the bus's rules again.
    Start {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus of the archive.
        #[arg(long, default_value = "default")]
        bus: String,
        /// Archive.
        #[arg(long)]
        archive: String,
        /// Window start (RFC 3339 or ms since the epoch), inclusive.
        #[arg(long)]
        start: String,
        /// Window end (RFC 3339 or ms since the epoch), exclusive.
        #[arg(long)]
        end: String,
        /// Only this rule (repeat for several; default: every rule).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Replay name.
        name: String,
    },
    /// A replay's state and progress.
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// Replay name.
        name: String,
    },
    /// Every replay.
    Ls {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop a replay.
    Cancel {
        #[command(flatten)]
        server: ServerArgs,
        /// Replay name.
        name: String,
    },
}

fn url(server: &ServerArgs, segments: &[&str]) -> anyhow::Result<String> {
    let (_, base) = client(server)?;
    let mut u = reqwest::Url::parse(&base).with_context(|| format!("--server {base:?}"))?;
    u.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--server {base:?} cannot be a base URL"))?
        .pop_if_empty()
        .extend(segments);
    Ok(u.to_string())
}

/// Send a request; the JSON of a 2xx answer, else the API's error.
async fn call(
    server: &ServerArgs,
    method: reqwest::Method,
    segments: &[&str],
    body: Option<Value>,
    what: &str,
) -> anyhow::Result<Value> {
    let (c, _) = client(server)?;
    let mut req = c.request(method, url(server, segments)?);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let (status, body) = send(with_auth(req, server), what).await?;
    if !(200..300).contains(&status) {
        return Err(api_error(what, status, &body));
    }
    Ok(body)
}

fn print(v: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A time argument: ms since the epoch, or RFC 3339 text (passed on).
fn time(arg: &str) -> Value {
    match arg.parse::<u64>() {
        Ok(ms) => json!(ms),
        Err(_) => json!(arg),
    }
}

pub(super) async fn archive(c: ArchiveCommand) -> anyhow::Result<()> {
    match c {
        ArchiveCommand::Put {
            server,
            bus,
            pattern,
            pattern_file,
            retention_days,
            description,
            name,
        } => {
            let text = match (pattern, pattern_file) {
                (Some(p), _) => Some(p),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("--pattern-file {}", f.display()))?,
                ),
                (None, None) => None,
            };
            let pattern: Option<Value> = text
                .map(|t| serde_json::from_str(&t).context("--pattern: not JSON"))
                .transpose()?;
            let body = json!({"pattern": pattern, "retentionDays": retention_days, "description": description});
            let v = call(
                &server,
                reqwest::Method::PUT,
                &["v1", "buses", &bus, "archives", &name],
                Some(body),
                "archive put",
            )
            .await?;
            print(&v)
        }
        ArchiveCommand::Get { server, bus, name } => {
            let v = call(
                &server,
                reqwest::Method::GET,
                &["v1", "buses", &bus, "archives", &name],
                None,
                "archive get",
            )
            .await?;
            print(&v)
        }
        ArchiveCommand::Ls { server, bus } => {
            let v = call(
                &server,
                reqwest::Method::GET,
                &["v1", "buses", &bus, "archives"],
                None,
                "archive ls",
            )
            .await?;
            outln!(
                "{:<24} {:>12} {:>14} {:>9}",
                "NAME",
                "EVENTS",
                "BYTES",
                "RETENTION"
            );
            for a in v["archives"].as_array().into_iter().flatten() {
                let days = a["retentionDays"].as_u64().unwrap_or(0);
                outln!(
                    "{:<24} {:>12} {:>14} {:>9}",
                    a["name"].as_str().unwrap_or(""),
                    a["eventCount"].as_u64().unwrap_or(0),
                    a["sizeBytes"].as_u64().unwrap_or(0),
                    if days == 0 {
                        "forever".to_string()
                    } else {
                        format!("{days}d")
                    }
                );
            }
            Ok(())
        }
        ArchiveCommand::Rm { server, bus, name } => {
            call(
                &server,
                reqwest::Method::DELETE,
                &["v1", "buses", &bus, "archives", &name],
                None,
                "archive rm",
            )
            .await?;
            outln!("archive {name} deleted");
            Ok(())
        }
    }
}

pub(super) async fn replay(c: ReplayCommand) -> anyhow::Result<()> {
    match c {
        ReplayCommand::Start {
            server,
            bus,
            archive,
            start,
            end,
            rules,
            description,
            name,
        } => {
            let mut body =
                json!({"bus": bus, "archive": archive, "start": time(&start), "end": time(&end)});
            if !rules.is_empty() {
                body["rules"] = json!(rules);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v = call(
                &server,
                reqwest::Method::POST,
                &["v1", "replays", &name],
                Some(body),
                "replay start",
            )
            .await?;
            print(&v)
        }
        ReplayCommand::Status { server, name } => {
            let v = call(
                &server,
                reqwest::Method::GET,
                &["v1", "replays", &name],
                None,
                "replay status",
            )
            .await?;
            print(&v)
        }
        ReplayCommand::Ls { server } => {
            let v = call(
                &server,
                reqwest::Method::GET,
                &["v1", "replays"],
                None,
                "replay ls",
            )
            .await?;
            outln!(
                "{:<24} {:<11} {:>10} {:<24}",
                "NAME",
                "STATE",
                "REPLAYED",
                "LAST REPLAYED"
            );
            for r in v["replays"].as_array().into_iter().flatten() {
                outln!(
                    "{:<24} {:<11} {:>10} {:<24}",
                    r["name"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or(""),
                    r["eventsReplayed"].as_u64().unwrap_or(0),
                    r["lastReplayedTime"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
        ReplayCommand::Cancel { server, name } => {
            let v = call(
                &server,
                reqwest::Method::POST,
                &["v1", "replays", &name, "cancel"],
                None,
                "replay cancel",
            )
            .await?;
            outln!("replay {name}: {}", v["state"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}
