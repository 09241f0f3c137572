//! Flotilla hub: watches Git sources, renders each app for each cluster and
//! serves signed per-cluster ClusterStates over gRPC with mutual TLS.
//!
//! See docs/ARCHITECTURE.md for the codemap.

pub mod analysis;
pub mod api;
pub mod config;
pub mod controller;
pub mod datadir;
pub mod events;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod store;
pub mod webhooks;

pub mod manifest;
pub mod pki;
pub mod plan;
pub mod raft;
pub mod render;
pub mod rollout;
pub mod source;
