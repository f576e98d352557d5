//! Command line: `serve` ([`serve`]), the API client commands `put`,
//! `apply`, `get` and `cluster` ([`client`]), `events` ([`events`]),
//! `local` ([`local`]),
//! `test-pattern` and `cert`.

pub mod local;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

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

mod client;
mod dlq;
mod events;
mod replay;
mod serve;

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
    /// Find an event and what became of its deliveries; list a bus's events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Start or stop a cluster of local processes on loopback.
    #[command(subcommand)]
    Local(LocalCommand),
    /// Archives of a bus: create, show, list, delete.
    #[command(subcommand)]
    Archive(replay::ArchiveCommand),
    /// Replays of an archive: start, status, list, cancel.
    #[command(subcommand)]
    Replay(replay::ReplayCommand),
    /// A target's dead letters: list them, send them again.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Move a target's cursor.
    #[command(subcommand)]
    Target(TargetCommand),
}

/// `strait dlq ...` (docs/replay.md).
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters of a rule (or one target of it), oldest first: time,
    /// target, status, attempts, id, redrive, reason.
    Ls {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus of the rule.
        #[arg(long, default_value = "default")]
        bus: String,
        /// The rule.
        #[arg(long)]
        rule: String,
        /// One target of the rule (default: all).
        #[arg(long)]
        target: Option<String>,
        /// Most dead letters to print (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where to start: the token a previous page printed.
        #[arg(long)]
        next: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters of a target again (same ids and trace), to it or
    /// to another target of the rule.
    Redrive {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus of the rule.
        #[arg(long, default_value = "default")]
        bus: String,
        /// The rule.
        #[arg(long)]
        rule: String,
        /// The target whose dead letters to send.
        #[arg(long)]
        target: String,
        /// Every dead letter not yet redriven.
        #[arg(long)]
        all: bool,
        /// Another target of the rule to send them to.
        #[arg(long)]
        to: Option<String>,
        /// Event ids.
        ids: Vec<String>,
    },
}

/// `strait target ...` (docs/replay.md).
#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Move a target's cursor to the first event committed at or after a
    /// time: back to re-deliver, forward to skip.
    Seek {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus of the rule.
        #[arg(long, default_value = "default")]
        bus: String,
        /// The rule.
        #[arg(long)]
        rule: String,
        /// The target.
        #[arg(long)]
        target: String,
        /// RFC 3339 time.
        #[arg(long)]
        time: String,
        /// Seek even if events after the time are past retention.
        #[arg(long)]
        allow_partial: bool,
    },
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

/// `strait events ...`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// One event and its deliveries, as a timeline: site, stage, time
    /// since the event was committed, outcome.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus.
        #[arg(long, default_value = "default")]
        bus: String,
        /// The event's CloudEvents `source` (needed when several sources
        /// used the id).
        #[arg(long)]
        source: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// The event's CloudEvents `id`.
        id: String,
    },
    /// A bus's events, oldest first, one page at a time.
    Ls {
        #[command(flatten)]
        server: ServerArgs,
        /// Bus.
        #[arg(long, default_value = "default")]
        bus: String,
        /// Only events of this CloudEvents `source`.
        #[arg(long)]
        source: Option<String>,
        /// Only events of this CloudEvents `type`.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events committed at or after this time (RFC 3339, or ms
        /// since the epoch).
        #[arg(long)]
        since: Option<String>,
        /// Only events committed before this time.
        #[arg(long)]
        until: Option<String>,
        /// Most events to print (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where to start: the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
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
    /// CA certificate(s), PEM, to trust for an `https://` server (instead
    /// of the system's roots).
    #[arg(long, env = "STRAIT_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate, PEM, for a node that asks for one
    /// (`http_tls.client_ca`); with `--client-key`.
    #[arg(long, env = "STRAIT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Its private key, PEM.
    #[arg(long, env = "STRAIT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
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
        Commands::Serve(a) => serve::serve(a).await,
        Commands::Put(a) => client::put(a).await,
        Commands::Apply(a) => client::apply(a).await.map(|_| ExitCode::SUCCESS),
        Commands::Get(a) => client::get(a).await.map(|_| ExitCode::SUCCESS),
        Commands::TestPattern(a) => Ok(test_pattern(a)),
        Commands::Cert(c) => cert(c).map(|_| ExitCode::SUCCESS),
        Commands::Cluster(c) => client::cluster(c).await.map(|_| ExitCode::SUCCESS),
        Commands::Events(c) => events::run(c).await.map(|_| ExitCode::SUCCESS),
        Commands::Dlq(c) => dlq::dlq(c).await.map(|_| ExitCode::SUCCESS),
        Commands::Target(c) => dlq::target(c).await.map(|_| ExitCode::SUCCESS),
        Commands::Local(c) => local(c).await.map(|_| ExitCode::SUCCESS),
        Commands::Archive(c) => replay::archive(c).await.map(|_| ExitCode::SUCCESS),
        Commands::Replay(c) => replay::replay(c).await.map(|_| ExitCode::SUCCESS),
    }
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

fn load_doc<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
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
    use crate::cluster::certs_watch::{Expiry, WARN_BEFORE_DAYS, expiry};
    let status = match expiry(info.not_after_unix(), chrono::Utc::now().timestamp()) {
        Expiry::Expired { days } => format!("EXPIRED {days} days ago: issue a new one"),
        Expiry::Soon { days } => {
            format!("EXPIRES SOON: {days} days left (under {WARN_BEFORE_DAYS}): issue a new one")
        }
        Expiry::Fine { days } => format!("ok, {days} days left"),
    };
    outln!("  status:    {status}");
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
