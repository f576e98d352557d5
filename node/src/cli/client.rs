//! The API client commands: `put`, `apply`, `get` and `cluster`.

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApplyArgs, ClusterCommand, GetArgs, PutArgs, ServerArgs, load_doc};
use crate::config::check::validate_name;
use crate::config::rule::RuleSpec;
use crate::config::source::SourceSpec;

pub(super) async fn cluster(c: ClusterCommand) -> anyhow::Result<()> {
    match c {
        ClusterCommand::Status {
            dir: Some(dir),
            json,
            ..
        } => {
            let body = crate::cli::local::dir_status(&dir).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                out!("{}", crate::cli::local::dir_status_table(&body));
            }
        }
        ClusterCommand::Status {
            server,
            dir: None,
            json,
        } => {
            let (client, base) = client(&server)?;
            let body = get_json(
                &client,
                &server,
                format!("{base}/v1/cluster"),
                "cluster status",
            )
            .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                out!("{}", crate::cli::local::status_table(&body));
            }
        }
        ClusterCommand::Join {
            server,
            node_id,
            raft_addr,
            http_addr,
        } => {
            let (client, base) = client(&server)?;
            let req = client
                .post(format!("{base}/v1/cluster/members"))
                .json(&json!({"id": node_id, "raftAddr": raft_addr, "httpAddr": http_addr}));
            let (status, body) = send(with_auth(req, &server), "cluster join").await?;
            if status != 200 {
                return Err(api_error("cluster join", status, &body));
            }
            outln!("node {node_id} is a voter; voters now {}", body["voters"]);
        }
        ClusterCommand::Leave { server, node_id } => {
            let (client, base) = client(&server)?;
            let req = client.delete(format!("{base}/v1/cluster/members/{node_id}"));
            let (status, body) = send(with_auth(req, &server), "cluster leave").await?;
            if status != 200 {
                return Err(api_error("cluster leave", status, &body));
            }
            outln!("node {node_id} removed; voters now {}", body["voters"]);
        }
    }
    Ok(())
}

/// The HTTP client for `--server`: trusting `--ca` (else the system's
/// roots) and presenting `--client-cert` when given.
pub(super) fn client(s: &ServerArgs) -> anyhow::Result<(reqwest::Client, String)> {
    let mut b = reqwest::Client::builder();
    if let Some(ca) = &s.ca {
        let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca {}: not a PEM certificate file", ca.display()))?;
        if certs.is_empty() {
            bail!(
                "--ca {}: no PEM certificate (BEGIN CERTIFICATE) in it",
                ca.display()
            );
        }
        b = b.tls_certs_only(certs);
    }
    if let (Some(cert), Some(key)) = (&s.client_cert, &s.client_key) {
        let mut pem =
            std::fs::read(cert).with_context(|| format!("--client-cert {}", cert.display()))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).with_context(|| format!("--client-key {}", key.display()))?);
        let id = reqwest::Identity::from_pem(&pem).with_context(|| {
            format!(
                "--client-cert {} / --client-key {}",
                cert.display(),
                key.display()
            )
        })?;
        b = b.identity(id);
    }
    let server = s.server.trim_end_matches('/').to_string();
    if s.token.is_some() && server.starts_with("http://") && !is_loopback(&server) {
        eprintln!(
            "warning: sending the bearer token over plain HTTP to {server}; use https:// (the node's http_tls)"
        );
    }
    Ok((b.build().context("HTTP client")?, server))
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

pub(super) fn with_auth(req: reqwest::RequestBuilder, s: &ServerArgs) -> reqwest::RequestBuilder {
    match &s.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

pub(super) async fn send(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<(u16, Value)> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach the server"))?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// GET `url`: the body of a 200 answer, else an error saying `what` failed.
pub(super) async fn get_json(
    c: &reqwest::Client,
    server: &ServerArgs,
    url: String,
    what: &str,
) -> anyhow::Result<Value> {
    let (status, body) = send(with_auth(c.get(url), server), what).await?;
    if status != 200 {
        return Err(api_error(what, status, &body));
    }
    Ok(body)
}

pub(super) fn api_error(what: &str, status: u16, body: &Value) -> anyhow::Error {
    let msg = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    anyhow!("{what}: HTTP {status}: {msg}")
}

pub(super) async fn put(a: PutArgs) -> anyhow::Result<ExitCode> {
    let (c, base) = client(&a.server)?;
    let mut ev = json!({
        "specversion": "1.0",
        "id": a.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        "source": a.source,
        "type": a.event_type,
    });
    if let Some(s) = &a.subject {
        ev["subject"] = json!(s);
    }
    if let Some(d) = &a.data {
        ev["data"] = serde_json::from_str(d).unwrap_or_else(|_| json!(d));
    }
    let req = c
        .post(format!("{base}/v1/buses/{}/events", a.bus))
        .header("content-type", crate::ingest::STRUCTURED)
        .body(ev.to_string());
    let (status, body) = send(with_auth(req, &a.server), "put").await?;
    outln!("{}", serde_json::to_string_pretty(&body)?);
    Ok(if (200..300).contains(&status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The declarative file for `strait apply`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyFile {
    #[serde(default)]
    buses: Vec<ApplyBus>,
    #[serde(default)]
    rules: Vec<ApplyRule>,
    #[serde(default)]
    sources: Vec<ApplySource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBus {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct ApplyRule {
    bus: String,
    name: String,
    #[serde(flatten)]
    spec: serde_json::Map<String, Value>,
}

/// A source: its name and the body of `PUT /v1/sources/{name}`.
#[derive(Debug, Deserialize)]
struct ApplySource {
    name: String,
    #[serde(flatten)]
    spec: serde_json::Map<String, Value>,
}

pub(super) async fn apply(a: ApplyArgs) -> anyhow::Result<()> {
    let file: ApplyFile = load_doc(&a.file)?;
    // Validate everything before changing anything.
    for (i, b) in file.buses.iter().enumerate() {
        validate_name("bus", &b.name)
            .map_err(|e| anyhow!("{}: buses[{i}].name: {}", a.file.display(), e.message))?;
    }
    for (i, r) in file.rules.iter().enumerate() {
        validate_name("rule", &r.name)
            .map_err(|e| anyhow!("{}: rules[{i}].name: {}", a.file.display(), e.message))?;
        RuleSpec::from_json(&Value::Object(r.spec.clone()))
            .map_err(|e| anyhow!("{}: rules[{i}] ({}): {e}", a.file.display(), r.name))?;
    }
    for (i, s) in file.sources.iter().enumerate() {
        validate_name("source", &s.name)
            .map_err(|e| anyhow!("{}: sources[{i}].name: {}", a.file.display(), e.message))?;
        SourceSpec::from_json(&Value::Object(s.spec.clone()))
            .map_err(|e| anyhow!("{}: sources[{i}] ({}): {e}", a.file.display(), s.name))?;
    }
    let (c, base) = client(&a.server)?;
    // PUT `body` at `path`; `what` names the resource in the output.
    let put = async |path: String, body: &Value, what: String| -> anyhow::Result<()> {
        let req = c.put(format!("{base}{path}")).json(body);
        let (status, body) = send(with_auth(req, &a.server), "apply").await?;
        if !(200..300).contains(&status) {
            return Err(api_error(&what, status, &body));
        }
        outln!("{what}: applied");
        Ok(())
    };
    for b in &file.buses {
        put(
            format!("/v1/buses/{}", b.name),
            &json!({"description": b.description}),
            format!("bus {}", b.name),
        )
        .await?;
    }
    for r in &file.rules {
        put(
            format!("/v1/buses/{}/rules/{}", r.bus, r.name),
            &Value::Object(r.spec.clone()),
            format!("rule {}/{}", r.bus, r.name),
        )
        .await?;
    }
    for s in &file.sources {
        put(
            format!("/v1/sources/{}", s.name),
            &Value::Object(s.spec.clone()),
            format!("source {}", s.name),
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn get(a: GetArgs) -> anyhow::Result<()> {
    let (c, base) = client(&a.server)?;
    let body = get_json(&c, &a.server, format!("{base}/v1/buses"), "get buses").await?;
    let buses: Vec<String> = body["buses"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if a.what == "buses" {
        outln!("{:<24} DESCRIPTION", "BUS");
        for b in body["buses"].as_array().into_iter().flatten() {
            outln!(
                "{:<24} {}",
                b["name"].as_str().unwrap_or(""),
                b["description"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    if let Some(b) = &a.bus
        && !buses.contains(b)
    {
        bail!("bus `{b}` does not exist");
    }
    if a.what == "sources" {
        return get_sources(&a, &c, &base).await;
    }
    outln!(
        "{:<16} {:<24} {:<8} {:<40} PATTERN",
        "BUS",
        "RULE",
        "ENABLED",
        "TARGETS"
    );
    for bus in buses
        .iter()
        .filter(|b| a.bus.as_ref().is_none_or(|x| x == *b))
    {
        let body = get_json(
            &c,
            &a.server,
            format!("{base}/v1/buses/{bus}/rules"),
            &format!("get rules of {bus}"),
        )
        .await?;
        for r in body["rules"].as_array().into_iter().flatten() {
            let targets: Vec<String> = r["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{}→{}",
                        t["id"].as_str().unwrap_or(""),
                        t["endpoint"].as_str().unwrap_or("")
                    )
                })
                .collect();
            outln!(
                "{:<16} {:<24} {:<8} {:<40} {}",
                bus,
                r["name"].as_str().unwrap_or(""),
                r["enabled"].as_bool().unwrap_or(true),
                targets.join(","),
                r["pattern"]
            );
        }
    }
    Ok(())
}

async fn get_sources(a: &GetArgs, c: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let body = get_json(c, &a.server, format!("{base}/v1/sources"), "get sources").await?;
    outln!(
        "{:<24} {:<10} {:<16} {:<16} QUEUE",
        "SOURCE",
        "TYPE",
        "SITE",
        "BUS"
    );
    let field = |s: &Value, k: &str| s[k].as_str().unwrap_or("").to_string();
    for s in body["sources"].as_array().into_iter().flatten() {
        let bus = field(s, "bus");
        if a.bus.as_ref().is_some_and(|b| *b != bus) {
            continue;
        }
        outln!(
            "{:<24} {:<10} {:<16} {:<16} {}",
            field(s, "name"),
            field(s, "type"),
            field(s, "site"),
            bus,
            field(s, "queueUrl")
        );
    }
    Ok(())
}
