//! Command line: `serve`, `put`, `apply`, `get`, `test-pattern`, `cert`,
//! `cluster` and `local`.

pub mod local;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::NodeConfig;
use crate::config::check::validate_name;
use crate::config::rule::RuleSpec;
use crate::config::source::SourceSpec;

/// `println!` for command output that does not panic when the reader went
/// away (`strait get rules | head`): a closed pipe ends the process quietly.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// Write command output to stdout. A reader that closed the pipe ends the
/// process with status 141 (as a shell reports SIGPIPE), without a panic;
/// any other write error ends it with status 1 and a message.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Strait: a multi-cloud CloudEvents federation gateway.
#[derive(Debug, Parser)]
#[command(name = "strait", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run a gateway node.
    Serve(ServeArgs),
    /// Send one event to a bus (structured mode).
    Put(PutArgs),
    /// Create or update buses, rules and sources from a YAML/JSON file
    /// (idempotent).
    Apply(ApplyArgs),
    /// List resources.
    Get(GetArgs),
    /// Check whether an event matches a pattern (offline).
    TestPattern(TestPatternArgs),
    /// Create the cluster CA and node certificates (for QUIC mutual TLS).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Inspect and change a site's membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Start or stop a cluster of local processes on loopback.
    #[command(subcommand)]
    Local(LocalCommand),
}

/// `strait cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, roles, leader, term, replication lag, certificate expiry.
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// A `strait local up` folder: every node of its cluster (read from
        /// DIR/cluster.json), running or not, and each site's leader.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a running node (started with `--join` or as a learner) as a voter.
    Join {
        #[command(flatten)]
        server: ServerArgs,
        /// The node's id.
        #[arg(long)]
        node_id: u64,
        /// Its QUIC address (host:port).
        #[arg(long)]
        raft_addr: String,
        /// Its HTTP address (host:port).
        #[arg(long)]
        http_addr: String,
    },
    /// Remove a node from its site.
    Leave {
        #[command(flatten)]
        server: ServerArgs,
        /// The node's id.
        #[arg(long)]
        node_id: u64,
    },
}

/// `strait local ...`.
#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start nodes (each a background process) and write DIR/cluster.json.
    /// Run again on the same folder (after `local down`), it starts the same
    /// nodes on the same ports with their data.
    Up {
        /// Directory for certificates, configs, data, logs and cluster.json.
        #[arg(long)]
        dir: PathBuf,
        /// A site and its node count, e.g. `idc:3` (repeatable). May be left
        /// out when DIR already holds a cluster.
        #[arg(long = "site")]
        sites: Vec<String>,
        /// YAML mapping merged into every node's config (when DIR already
        /// holds a cluster: its configs are written again with it).
        #[arg(long)]
        extra: Option<PathBuf>,
        /// Seconds to wait for every node to be ready.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// With two or more sites: voters of the control group (shared
        /// buses and rules) per site; every other node is a learner. 0: no
        /// control group (each site keeps its own rules). Default 1.
        #[arg(long)]
        control_voters_per_site: Option<usize>,
        /// Delete the cluster already in DIR (data, configs, certificates)
        /// and start a new one on new ports.
        #[arg(long)]
        fresh: bool,
    },
    /// Stop the nodes of DIR's cluster (data is kept; `local up --dir DIR`
    /// starts them again).
    Down {
        /// The directory given to `up`.
        #[arg(long)]
        dir: PathBuf,
        /// Also delete what `up` created in DIR: data, configs, logs,
        /// certificates and cluster.json.
        #[arg(long)]
        purge: bool,
    },
}

/// `strait cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a cluster CA (`ca.pem`, `ca.key`) in a new directory.
    InitCa {
        /// Directory for the CA files (refuses to overwrite an existing CA).
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node certificate signed by the CA.
    Issue {
        /// The CA directory (from `init-ca`).
        #[arg(long)]
        ca: PathBuf,
        /// Node id inside its site.
        #[arg(long)]
        node_id: u64,
        /// Site name.
        #[arg(long)]
        site: String,
        /// DNS names the node is reached by (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses the node is reached by (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Output directory (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Show a certificate: identity, names, expiry.
    Show {
        /// A PEM file.
        file: PathBuf,
    },
}

/// `strait serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Development mode: no auth, bus `default`, data in ./strait-data.
    #[arg(long)]
    pub dev: bool,
    /// YAML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (overrides the config file).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (overrides the config file).
    #[arg(long)]
    pub http: Option<String>,
    /// Join an existing site through this node's HTTP address (overrides
    /// `cluster.join`; needs `cluster.listen` and `cluster.certs_dir`).
    #[arg(long)]
    pub join: Option<String>,
}

/// Where the API is and how to authenticate.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Base URL of a Strait node.
    #[arg(long, env = "STRAIT_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token (not needed in dev mode).
    #[arg(long, env = "STRAIT_TOKEN")]
    pub token: Option<String>,
}

/// `strait put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Bus.
    #[arg(long, default_value = "default")]
    bus: String,
    /// Event id (default: a new UUID).
    #[arg(long)]
    id: Option<String>,
    /// Event source.
    #[arg(long, default_value = "strait-cli")]
    source: String,
    /// Event type.
    #[arg(long = "type")]
    event_type: String,
    /// Event subject.
    #[arg(long)]
    subject: Option<String>,
    /// JSON data (a JSON value; plain text is sent as a string).
    #[arg(long)]
    data: Option<String>,
}

/// `strait apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// File with `buses:`, `rules:` and `sources:`.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
}

/// `strait get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// `rules`, `buses` or `sources`.
    #[arg(value_parser = ["rules", "buses", "sources"])]
    what: String,
    /// Bus (for rules and sources; default: every bus).
    #[arg(long)]
    bus: Option<String>,
}

/// `strait test-pattern`.
#[derive(Debug, Args)]
pub struct TestPatternArgs {
    /// Pattern file (JSON or YAML).
    #[arg(long)]
    pattern: PathBuf,
    /// Event file (JSON or YAML).
    #[arg(long)]
    event: PathBuf,
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Commands::Serve(a) => serve(a).await,
        Commands::Put(a) => put(a).await,
        Commands::Apply(a) => apply(a).await.map(|_| ExitCode::SUCCESS),
        Commands::Get(a) => get(a).await.map(|_| ExitCode::SUCCESS),
        Commands::TestPattern(a) => Ok(test_pattern(a)),
        Commands::Cert(c) => cert(c).map(|_| ExitCode::SUCCESS),
        Commands::Cluster(c) => cluster(c).await.map(|_| ExitCode::SUCCESS),
        Commands::Local(c) => local(c).await.map(|_| ExitCode::SUCCESS),
    }
}

/// Exit code of `strait serve` after a storage error stopped the node
/// (`EX_IOERR` of sysexits.h): a supervisor should restart it.
pub const EXIT_STORAGE_FAILED: u8 = 74;

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match &a.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    if a.dev {
        cfg.dev = true;
    }
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(h) = a.http {
        cfg.http = h;
    }
    if let Some(j) = a.join {
        cfg.cluster.join = Some(j);
        cfg.cluster.initial_members.clear();
    }
    if a.config.is_none() && !a.dev {
        bail!("give --dev for a local development node, or --config FILE for a real one");
    }
    cfg.validate()?;
    let _telemetry = crate::telemetry::init(cfg.telemetry.otlp_endpoint.as_deref())?;
    let listener = match tokio::net::TcpListener::bind(&cfg.http).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot listen on {}: the address is in use (another Strait node or another program listens there); give this node another address with --http 127.0.0.1:PORT (or `http:` in its config)",
            cfg.http
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {}", cfg.http)),
    };
    let addr = listener.local_addr()?;
    let data_dir = cfg.data_dir.clone();
    let dev = cfg.dev;
    let app = match crate::app::start(cfg).await {
        Ok(app) => app,
        Err(e) => {
            let others = crate::cli::local::processes_using_data_dir(&data_dir);
            let hint = match others.first() {
                Some(pid) => format!(
                    " (another Strait node, pid {pid}, uses this data directory; give this node its own with --data-dir DIR, or `data_dir:` in its config)"
                ),
                None => String::new(),
            };
            return Err(e.context(format!("cannot open data dir {}{hint}", data_dir.display())));
        }
    };
    eprintln!(
        "strait {} listening on http://{addr} (data in {}{})",
        env!("CARGO_PKG_VERSION"),
        data_dir.display(),
        if dev { ", dev mode: no auth" } else { "" }
    );
    if dev {
        eprintln!(
            "try:\n  curl -X POST http://{addr}/v1/buses/default/events \\\n    -H 'content-type: application/cloudevents+json' \\\n    -d '{{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/demo\",\"type\":\"demo.hello\",\"data\":{{\"hello\":\"world\"}}}}'"
        );
    }
    let router = crate::http::router(app.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watch = tokio::spawn(watch_failure(
        app.clone(),
        std::time::Duration::from_secs(app.cfg.storage_failure_exit_secs),
        stop_tx,
    ));
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop_rx => {}
            }
        })
        .await?;
    watch.abort();
    if let Some(f) = app.failure() {
        // Best effort: Raft has stopped, and the disk may refuse the flush.
        if let Err(e) = app.site.shutdown().await {
            tracing::warn!(error = %e, "stopping after the failure");
        }
        if let Some(e) = app.writer.endpoint() {
            e.close().await;
        }
        tracing::error!(error = %f.message, code = EXIT_STORAGE_FAILED, "exiting: this node's Raft had stopped");
        return Ok(ExitCode::from(EXIT_STORAGE_FAILED));
    }
    app.site.shutdown().await?;
    if let Some(e) = app.writer.endpoint() {
        e.close().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Once this node's Raft stops on its own (a storage error), say so loudly,
/// and after `exit_after` (unless zero) stop serving so that `serve` exits
/// with [`EXIT_STORAGE_FAILED`].
async fn watch_failure(
    app: std::sync::Arc<crate::app::App>,
    exit_after: std::time::Duration,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    let f = app.failed().await;
    metrics::gauge!("strait_raft_stopped").set(1.0);
    let what = if f.storage {
        "storage failed"
    } else {
        "Raft stopped"
    };
    if exit_after.is_zero() {
        tracing::error!(
            error = %f.message,
            "{what}: this node accepts no writes until it is restarted; /readyz and /healthz answer 503, \
             writes 507 (storage_failure_exit_secs is 0: waiting for a restart by hand); \
             free disk space or fix the disk, then restart it"
        );
        return;
    }
    tracing::error!(
        error = %f.message,
        exit_in_secs = exit_after.as_secs(),
        code = EXIT_STORAGE_FAILED,
        "{what}: this node accepts no writes until it is restarted; /readyz and /healthz answer 503, \
         writes 507; exiting soon so that a supervisor restarts it (free disk space or fix the disk)"
    );
    tokio::time::sleep(exit_after).await;
    let _ = stop.send(());
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn cluster(c: ClusterCommand) -> anyhow::Result<()> {
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
            let (client, base) = client(&server);
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
            let (client, base) = client(&server);
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
            let (client, base) = client(&server);
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

async fn local(c: LocalCommand) -> anyhow::Result<()> {
    match c {
        LocalCommand::Up {
            dir,
            sites,
            extra,
            timeout,
            control_voters_per_site,
            fresh,
        } => {
            let sites = sites
                .iter()
                .map(|s| crate::cli::local::parse_site(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for w in crate::cli::local::site_warnings(&sites) {
                eprintln!("warning: {w}");
            }
            let opts = crate::cli::local::UpOptions {
                dir: dir.clone(),
                sites,
                extra,
                timeout: std::time::Duration::from_secs(timeout),
                control_voters_per_site,
                fresh,
            };
            let cluster = crate::cli::local::up(&opts).await?;
            outln!(
                "local cluster up ({} nodes); see {}",
                cluster.nodes.len(),
                crate::cli::local::cluster_file(&dir).display()
            );
            out!("{}", crate::cli::local::describe(&cluster));
        }
        LocalCommand::Down { dir, purge } => {
            let r = crate::cli::local::down(&dir, crate::cli::local::STOP_GRACE, purge).await?;
            let names: Vec<String> = r
                .stopped
                .iter()
                .map(|(n, pid)| format!("{n} pid {pid}"))
                .collect();
            outln!(
                "stopped {} nodes{}",
                r.stopped.len(),
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", names.join(", "))
                }
            );
            if purge {
                outln!("deleted the cluster in {}", dir.display());
            } else {
                outln!(
                    "data kept in {d}: `strait local up --dir {d}` starts the same cluster again, `strait local down --dir {d} --purge` deletes it",
                    d = dir.display()
                );
            }
        }
    }
    Ok(())
}

fn client(s: &ServerArgs) -> (reqwest::Client, String) {
    (
        reqwest::Client::new(),
        s.server.trim_end_matches('/').to_string(),
    )
}

fn with_auth(req: reqwest::RequestBuilder, s: &ServerArgs) -> reqwest::RequestBuilder {
    match &s.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<(u16, Value)> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach the server"))?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// GET `url`: the body of a 200 answer, else an error saying `what` failed.
async fn get_json(
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

fn api_error(what: &str, status: u16, body: &Value) -> anyhow::Error {
    let msg = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    anyhow!("{what}: HTTP {status}: {msg}")
}

async fn put(a: PutArgs) -> anyhow::Result<ExitCode> {
    let (c, base) = client(&a.server);
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

fn load_doc<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

async fn apply(a: ApplyArgs) -> anyhow::Result<()> {
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
    let (c, base) = client(&a.server);
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

async fn get(a: GetArgs) -> anyhow::Result<()> {
    let (c, base) = client(&a.server);
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

/// Exit status of `test-pattern` when a file cannot be read or the pattern
/// is invalid (0: the event matches, 1: it does not; 2 is also what a bad
/// flag gives).
pub const TEST_PATTERN_ERROR: u8 = 2;

fn test_pattern(a: TestPatternArgs) -> ExitCode {
    match pattern_matches(&a) {
        Ok(matched) => {
            outln!("{}", json!({"matched": matched}));
            if matched {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(TEST_PATTERN_ERROR)
        }
    }
}

fn pattern_matches(a: &TestPatternArgs) -> anyhow::Result<bool> {
    let pattern: Value = load_doc(&a.pattern)?;
    let event: Value = load_doc(&a.event)?;
    let p = strait_routing::pattern::Pattern::parse(&pattern)
        .map_err(|e| anyhow!("{}: invalid pattern: {e}", a.pattern.display()))?;
    Ok(p.matches(&event))
}

fn show_cert(info: &strait_federation::certs::CertInfo) {
    let day = |t: std::time::SystemTime| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339();
    outln!("  subject:   {}", info.subject);
    if let Some(id) = &info.identity {
        outln!("  identity:  {id}");
    }
    if info.is_ca {
        outln!("  role:      certificate authority");
    }
    if !info.dns_names.is_empty() {
        outln!("  dns:       {}", info.dns_names.join(", "));
    }
    if !info.ips.is_empty() {
        let ips: Vec<String> = info.ips.iter().map(|i| i.to_string()).collect();
        outln!("  ip:        {}", ips.join(", "));
    }
    outln!(
        "  valid:     {} to {}",
        day(info.not_before),
        day(info.not_after)
    );
}

fn cert(c: CertCommand) -> anyhow::Result<()> {
    use strait_federation::certs;
    match c {
        CertCommand::InitCa { dir, days } => {
            let ca = certs::init_ca_with(
                &dir,
                &certs::CaOptions {
                    validity_days: days,
                },
            )?;
            outln!(
                "created CA {} (key {})",
                ca.cert_path.display(),
                ca.key_path.display()
            );
            show_cert(&ca.info);
        }
        CertCommand::Issue {
            ca,
            node_id,
            site,
            dns,
            ip,
            out,
            days,
        } => {
            let out = out.unwrap_or_else(|| ca.clone());
            let req = certs::NodeCertRequest {
                node_id,
                site,
                dns,
                ips: ip,
                validity_days: days,
            };
            let issued = certs::issue_node_cert_with(&ca, &req, &out)?;
            outln!(
                "issued {} (key {})",
                issued.cert_path.display(),
                issued.key_path.display()
            );
            show_cert(&issued.info);
        }
        CertCommand::Show { file } => {
            let info = certs::read_cert_info(&file)?;
            outln!("{}", file.display());
            show_cert(&info);
        }
    }
    Ok(())
}
