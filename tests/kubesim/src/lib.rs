//! A Kubernetes API simulator that the real `kubectl` and kube-rs accept (DESIGN.md §10).
//!
//! [`KubeSim::start`] serves HTTPS (HTTP/2 and HTTP/1.1) on loopback with a fresh CA and writes a
//! kubeconfig (context `kubesim`, bearer token). It serves discovery, OpenAPI v2/v3, every
//! built-in resource of the Kubernetes release k8s-openapi targets ([`builtin`]), CRDs, CRUD,
//! list/watch with resourceVersion and selectors, JSON/merge/strategic patches, server-side apply
//! with managed fields and conflicts, finalizers and namespace cascade, the `status` subresource,
//! and simulated workload controllers whose behaviour is a knob ([`WorkloadMode`]).
//!
//! One store behind a `std::sync::Mutex` holds all state; every request is a short synchronous
//! critical section and the lock is never held across an `.await`. This departs from "one task
//! owns each piece of state" on purpose: a request/response API over a single in-memory map is
//! simpler and as correct with a mutex, and watches read the event log instead of sharing it.

pub mod apply;
pub mod builtin;
pub mod crd;
pub mod defaults;
pub mod deletion;
pub mod discovery;
pub mod error;
pub mod fields;
pub mod handler;
pub mod http;
pub mod knobs;
pub mod kubeconfig;
pub mod managed;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod resource;
pub mod scale;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod validate;
pub mod watch;
pub mod workload;

pub use error::{ApiError, StartError};
pub use knobs::{RequestCounts, WorkloadRequest};
pub use server::KubeSim;
pub use workload::{ObjectRef, WorkloadMode};
