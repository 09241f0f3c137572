//! `alerts`: alert delivery from the hub's notifier to a local webhook sink, on a real store (redb
//! with fsync) and the real notifier, as the leader runs it. Latency: events recorded one at a time,
//! each waited for at the sink (record → arrival). Throughput: `events` recorded in batches of
//! `batch` as fast as the store takes them, timed from the first record to the last arrival. Every
//! event must arrive, signed, with its own delivery id, or the run fails.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use flotilla_hub::config::HubConfig;
use flotilla_hub::events::{EventLog, NewEvent};
use flotilla_hub::metrics::HubMetrics;
use flotilla_hub::notify::Notifier;
use flotilla_hub::store::HubStore;
use flotilla_tests::sink::{Sink, app_failed};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn event(n: usize) -> NewEvent {
    app_failed(&format!("edge-{}", n % 100), n)
}

pub async fn alerts(events: usize, batch: usize, samples: usize) -> anyhow::Result<()> {
    ensure!(
        events >= 1 && batch >= 1 && samples >= 1,
        "at least one of each"
    );
    let dir = tempfile::tempdir()?;
    let sink = Sink::start();
    std::fs::write(dir.path().join("hmac"), "bench-secret")?;
    let config = HubConfig::parse(&format!(
        "notifications:\n  queueLimit: {}\n  targets:\n    - name: sink\n      type: webhook\n      url: {}\n      secretFile: {}\n",
        events + samples + 10,
        sink.url("/alerts"),
        dir.path().join("hmac").display()
    ))?;
    let store = HubStore::open(&dir.path().join("hub.redb"))?;
    let log = EventLog::new(store.clone(), (events + samples + 100) as u64);
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    Notifier {
        store: store.clone(),
        events: log.clone(),
        metrics: HubMetrics::new(),
        settings: config.notifications.clone(),
        hub_id: "bench".into(),
    }
    .start(&tracker, stop.clone());
    let ready = Instant::now();
    while store.meta("notify/sink")?.is_none() {
        ensure!(
            ready.elapsed() < Duration::from_secs(10),
            "the notifier did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Latency, one event at a time.
    let mut latencies = Vec::new();
    for n in 0..samples {
        let before = sink.all().len();
        let appended = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || log.record_blocking(vec![event(n)])).await?;
            Instant::now()
        };
        let got = sink
            .wait_for(Duration::from_secs(30), "the alert", |d| d.len() > before)
            .await;
        latencies.push(got[before].at.saturating_duration_since(appended));
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "alert latency, record -> arrival, {samples} events one at a time: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(latencies[samples / 2]),
        ms(latencies[samples * 9 / 10]),
        ms(latencies[samples - 1])
    );

    // Throughput.
    let before = sink.all().len();
    let started = Instant::now();
    let mut recorded = 0;
    while recorded < events {
        let n = batch.min(events - recorded);
        let batch: Vec<NewEvent> = (recorded..recorded + n)
            .map(|i| event(samples + i))
            .collect();
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.record_blocking(batch)).await?;
        recorded += n;
    }
    let record_time = started.elapsed();
    let all = sink
        .wait_for(Duration::from_secs(600), "every alert", |d| {
            d.len() >= before + events
        })
        .await;
    let elapsed = all[before + events - 1]
        .at
        .saturating_duration_since(started);
    let ids: BTreeSet<&str> = all[before..]
        .iter()
        .map(|d| {
            d.headers
                .get("x-flotilla-delivery")
                .map(String::as_str)
                .unwrap_or("")
        })
        .collect();
    ensure!(
        ids.len() == events,
        "{} distinct delivery ids for {events} events",
        ids.len()
    );
    ensure!(
        all[before..]
            .iter()
            .all(|d| d.headers.contains_key("x-flotilla-signature")),
        "an alert was not signed"
    );
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    println!(
        "alert throughput, {events} events recorded in batches of {batch} (in {:.2} s): all delivered in {:.2} s, {:.0} alerts/s",
        record_time.as_secs_f64(),
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    let _ = store.meta("notify/sink").context("reading the cursor")?;
    Ok(())
}
