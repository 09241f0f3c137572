//! flotilla.v1 wire types and gRPC stubs, generated from `proto/flotilla/v1/flotilla.proto` and
//! `proto/flotilla/v1/replication.proto` (the hub replicas' peer channel).
//!
//! Only the hub's and agent's API modules use these types; everything else
//! works with the domain types in `flotilla-common`.

/// The flotilla.v1 package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}
