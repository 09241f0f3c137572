//! Fixtures for Flotilla's end-to-end tests: Git repositories built with the
//! real `git` binary, and a fleet of real hub and agent processes.

pub mod fixture;
pub mod rollout;

pub use flotilla_cli::fleet;
