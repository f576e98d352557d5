//! The Strait node: configuration, CLI, HTTP APIs (CloudEvents, Alibaba and
//! AWS compatible), group commit, dispatcher, cluster membership, the
//! control-group replica, link and source tasks, and telemetry around the
//! replicated site state of `strait-federation`.

pub mod alibaba;
pub mod api;
pub mod app;
pub mod aws;
pub mod bus_target;
pub mod cli;
pub mod cluster;
pub mod cluster_api;
pub mod commit;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod feed;
pub mod ingest;
pub mod links;
pub mod local;
pub mod source_spec;
pub mod sources;
pub mod spec;
pub mod telemetry;
pub mod trace;
