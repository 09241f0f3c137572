//! The `flotilla` operator CLI as a library: the admin client, local
//! rendering, and the local-fleet launcher shared by `flotilla demo` and the
//! end-to-end tests.

pub mod client;
pub mod demo;
pub mod fleet;
pub mod output;
pub mod plan;
pub mod render;
pub mod replicas;
pub mod rollout;
