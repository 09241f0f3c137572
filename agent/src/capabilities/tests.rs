use std::pin::Pin;
use std::sync::{Arc, Mutex};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_server::{Agent, AgentServer};
use tokio_stream::Stream;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

use super::*;

fn caps(kube: Option<&str>, entries: &[&str]) -> Capabilities {
    Capabilities {
        kube_version: kube.map(str::to_string),
        api_versions: entries.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn each_flag_replaces_what_discovery_found_for_its_field() {
    let discovered = caps(Some("v1.32.4"), &["v1", "apps/v1"]);
    let none = Overrides::default();
    assert_eq!(none.apply(discovered.clone()), discovered);
    assert!(!none.complete());
    let version = Overrides {
        kube_version: Some("v1.30.0".into()),
        api_versions: None,
    };
    assert_eq!(
        version.apply(discovered.clone()),
        caps(Some("v1.30.0"), &["v1", "apps/v1"])
    );
    let both = Overrides {
        kube_version: Some("v1.30.0".into()),
        api_versions: Some(["example.com/v1".to_string()].into()),
    };
    assert!(both.complete());
    assert_eq!(
        both.apply(discovered),
        caps(Some("v1.30.0"), &["example.com/v1"])
    );
    // An empty --api-versions list is a list: it replaces, it does not fall back.
    let empty = Overrides {
        kube_version: None,
        api_versions: Some(BTreeSet::new()),
    };
    assert_eq!(empty.apply(caps(None, &["v1"])), Capabilities::default());
}

#[test]
fn failures_are_retried_from_a_second_up_to_the_interval() {
    let interval = Duration::from_secs(300);
    let delays: Vec<u64> = (0..12)
        .map(|n| retry_delay(n, interval).as_secs())
        .collect();
    assert_eq!(delays, [300, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    assert_eq!(retry_delay(u32::MAX, interval), interval);
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Answers ReportCapabilities with `answer` (None: accept) and records every report.
#[derive(Clone, Default)]
struct Hub {
    reports: Arc<Mutex<Vec<pb::Capabilities>>>,
    answer: Arc<Mutex<Option<Code>>>,
}

#[tonic::async_trait]
impl Agent for Hub {
    type WatchStream = BoxStream<pb::Announce>;
    type FetchObjectsStream = BoxStream<pb::Blob>;
    type ReportStatusStream = BoxStream<pb::Ack>;

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
    async fn get_cluster_state(
        &self,
        _: Request<pb::GetClusterStateRequest>,
    ) -> Result<Response<pb::GetClusterStateResponse>, Status> {
        Err(Status::unimplemented("get"))
    }
    async fn fetch_objects(
        &self,
        _: Request<pb::FetchObjectsRequest>,
    ) -> Result<Response<Self::FetchObjectsStream>, Status> {
        Err(Status::unimplemented("fetch"))
    }
    async fn report_status(
        &self,
        _: Request<Streaming<pb::StatusReport>>,
    ) -> Result<Response<Self::ReportStatusStream>, Status> {
        Err(Status::unimplemented("report"))
    }
    async fn renew(
        &self,
        _: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        Err(Status::unimplemented("renew"))
    }
    async fn report_capabilities(
        &self,
        request: Request<pb::ReportCapabilitiesRequest>,
    ) -> Result<Response<pb::ReportCapabilitiesResponse>, Status> {
        let sent = request.into_inner().capabilities.unwrap_or_default();
        self.reports.lock().unwrap().push(sent);
        match *self.answer.lock().unwrap() {
            None => Ok(Response::new(pb::ReportCapabilitiesResponse {
                changed: true,
            })),
            Some(code) => Err(Status::new(code, "refused by the test hub")),
        }
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_at_start_and_on_change_only() {
    let hub = Hub::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        Server::builder()
            .add_service(AgentServer::new(hub.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let reading = Arc::new(Mutex::new(Ok(caps(Some("v1.32.4"), &["v1"]))));
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // An absence of reports is checked after the reporter took a few more readings: each reading's
    // report (if any) is sent before the next reading starts.
    let readings_later = |n: usize| {
        let taken = taken.clone();
        let start = taken.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            until("more readings", || {
                taken.load(std::sync::atomic::Ordering::SeqCst) >= start + n
            })
            .await
        }
    };
    let reporter = CapabilityReporter {
        hub: crate::link::HubHandle::fixed(channel),
        reader: CapabilityReader::new(
            Probe::Scripted(reading.clone(), taken.clone()),
            Overrides::default(),
        ),
        interval: Duration::from_millis(10),
        answered: None,
    };
    let task = tokio::spawn(reporter.run(stop.clone()));
    let reports = || hub.reports.lock().unwrap().clone();

    until("the report at start", || reports().len() == 1).await;
    assert_eq!(reports()[0].kube_version, "v1.32.4");
    assert_eq!(reports()[0].api_versions, ["v1"]);
    // Many readings later, nothing new was sent.
    readings_later(5).await;
    assert_eq!(reports().len(), 1, "unchanged readings send nothing");

    // A failed reading sends nothing; the next good one that differs is sent.
    *reading.lock().unwrap() = Err("the API server is unavailable".into());
    readings_later(3).await;
    assert_eq!(reports().len(), 1);
    *reading.lock().unwrap() = Ok(caps(Some("v1.32.4"), &["v1", "example.com/v1"]));
    until("the changed capabilities", || reports().len() == 2).await;
    assert_eq!(reports()[1].api_versions, ["example.com/v1", "v1"]);

    // A refusal is final for that reading: it is not sent again until it changes.
    *hub.answer.lock().unwrap() = Some(Code::InvalidArgument);
    *reading.lock().unwrap() = Ok(caps(Some("v1.33.0"), &["v1"]));
    until("the refused report", || reports().len() == 3).await;
    readings_later(5).await;
    assert_eq!(reports().len(), 3, "a refused reading is not repeated");

    // Over the hub's limits: not sent at all.
    *hub.answer.lock().unwrap() = None;
    let oversized: Vec<String> = (0..=flotilla_common::capabilities::MAX_API_VERSIONS)
        .map(|i| format!("g{i}.example.com/v1"))
        .collect();
    *reading.lock().unwrap() = Ok(Capabilities {
        kube_version: None,
        api_versions: oversized.into_iter().collect(),
    });
    readings_later(5).await;
    assert_eq!(reports().len(), 3, "oversized capabilities are not sent");

    // A hub without the call ends the task.
    *hub.answer.lock().unwrap() = Some(Code::Unimplemented);
    *reading.lock().unwrap() = Ok(caps(None, &["v2"]));
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the task ends when the hub does not know the call")
        .unwrap()
        .unwrap();
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn nothing_to_discover_is_reported_once_then_the_task_ends() {
    let stop = CancellationToken::new();
    let mut reader = CapabilityReader::new(
        Probe::None,
        Overrides {
            kube_version: Some("v1.30.0".into()),
            api_versions: None,
        },
    );
    assert!(reader.is_static());
    let (registered, read) = reader.for_registration().await;
    assert!(read);
    assert_eq!(registered, caps(Some("v1.30.0"), &[]));
    // Registration carried them: nothing is left to report.
    let reporter = CapabilityReporter {
        hub: crate::link::HubHandle::fixed(
            Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
        ),
        reader,
        interval: Duration::from_secs(300),
        answered: Some(registered),
    };
    tokio::time::timeout(Duration::from_secs(5), reporter.run(stop))
        .await
        .expect("ends at once")
        .unwrap();
}
