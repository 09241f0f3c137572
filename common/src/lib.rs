//! Domain types and pure logic shared by the Flotilla hub and agent.
//!
//! Nothing in this crate does network or disk IO, and it depends on no async
//! runtime: it is the vocabulary both sides agree on (see docs/ARCHITECTURE.md).

pub mod canonical;
pub mod capabilities;
pub mod cluster_state;
pub mod digest;
pub mod ids;
pub mod labels;
pub mod limits;
pub mod names;
pub mod object;
pub mod peer;
pub mod status;
pub mod yaml;
