//! Fixtures for Flotilla's end-to-end tests: Git repositories built with the
//! real `git` binary, a fleet of real hub and agent processes, and a TCP forwarder that
//! gives a server a second address a test can take away.

pub mod fixture;
pub mod forwarder;
pub mod prometheus;
pub mod replicated;
pub mod rollout;
pub mod sink;
pub mod webhook;

pub use flotilla_cli::fleet;
