//! The Strait node: configuration, CLI, HTTP APIs (CloudEvents, Alibaba and
//! AWS compatible), group commit, dispatcher, cluster membership, the
//! control-group replica, link and source tasks, and telemetry around the
//! replicated site state of `strait-federation`.
//!
//! The modules are private; what other crates (the binary, tests, benches,
//! fuzz targets) use is re-exported here. docs/architecture.md maps the
//! folders.

mod app;
pub mod archive;
pub mod auth;
mod cli;
mod cluster;
pub mod config;
mod dispatch;
mod http;
mod ingest;
mod links;
pub mod lookup;
mod redrive;
pub mod replay;
pub mod server;
mod sources;
mod telemetry;
mod trace;
mod util;

pub use app::{App, router, start};
pub use cli::{Cli, local, run};
pub use config::rule::RuleSpec;
pub use dispatch::{TargetStats, stats as target_stats};
pub use ingest::parse_request;
pub use trace::TraceParent;
