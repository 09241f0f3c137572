//! `render`: the hub's renderer over a fleet of N clusters in 3 targets, for a raw, a template, a
//! kustomize and a Helm app, with the real tools (kubectl kustomize, Helm's engine through tools/helm).
//!
//! Without memoization every (cluster, app) renders on its own (measured on a sample of clusters, since
//! per-cluster Helm runs take minutes for a large fleet); with it, the controller's `render_for_clusters`
//! renders each distinct input once. Before any figure is printed every cluster is checked to have got
//! every app, and the sampled clusters' memoized objects are checked to equal their own renders.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use flotilla_common::labels::Labels;
use flotilla_common::limits::Limits;
use flotilla_hub::controller::{RenderMemo, RenderSlots, cluster_info, render_for_clusters};
use flotilla_hub::manifest::load_manifest;
use flotilla_hub::render::{RenderEnv, RepoTree, Tools, render_app};
use flotilla_hub::store::ClusterRecord;
use tokio_util::sync::CancellationToken;

const MANIFEST: &str = r#"
apps:
  - name: raw
    path: raw
    targets: &targets
      - {name: edge, selector: {matchLabels: {tier: edge}}, values: {replicas: 1}}
      - {name: core, selector: {matchLabels: {tier: core}}, values: {replicas: 3}}
      - {name: lab, selector: {}, values: {replicas: 2}}
  - name: template
    path: template
    targets: *targets
  - name: kustomize
    path: kustomize/base
    targets:
      - {name: edge, selector: {matchLabels: {tier: edge}}, path: kustomize/edge}
      - {name: core, selector: {matchLabels: {tier: core}}, path: kustomize/core}
      - {name: lab, selector: {}, path: kustomize/lab}
  - name: helm
    path: chart
    namespace: shop
    targets: *targets
"#;

fn tree(commit: &str, raw_revision: u32) -> RepoTree {
    let mut t = RepoTree::new(commit).with_file("flotilla.yaml", MANIFEST);
    for i in 0..20 {
        t = t.with_file(
            &format!("raw/cm-{i}.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: raw-{i}}}\ndata: {{revision: \"{raw_revision}\"}}\n"
            ),
        );
        t = t.with_file(
            &format!("template/cm-{i}.yaml.j2"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: tpl-{i}}}\ndata: {{tier: \"{{{{ cluster.labels.tier }}}}\", replicas: \"{{{{ values.replicas }}}}\"}}\n"
            ),
        );
        t = t.with_file(
            &format!("kustomize/base/cm-{i}.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: kz-{i}}}\ndata: {{a: b}}\n"
            ),
        );
        t = t.with_file(
            &format!("chart/templates/cm-{i}.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}-{i}\ndata:\n  replicas: {{{{ .Values.replicas | quote }}}}\n"
            ),
        );
    }
    let resources: Vec<String> = (0..20).map(|i| format!("cm-{i}.yaml")).collect();
    t = t.with_file(
        "kustomize/base/kustomization.yaml",
        format!("resources: [{}]\n", resources.join(", ")),
    );
    for tier in ["edge", "core", "lab"] {
        t = t.with_file(
            &format!("kustomize/{tier}/kustomization.yaml"),
            format!("resources: [../base]\nnamePrefix: {tier}-\ncommonLabels: {{tier: {tier}}}\n"),
        );
    }
    t.with_file(
        "chart/Chart.yaml",
        "apiVersion: v2\nname: shop\nversion: 1.0.0\n",
    )
    .with_file("chart/values.yaml", "replicas: 5\n")
}

fn fleet(n: usize) -> Vec<ClusterRecord> {
    (0..n)
        .map(|i| ClusterRecord {
            id: format!("c-{i:016x}"),
            name: format!("cluster-{i}"),
            labels: Labels::from([(
                "tier".to_string(),
                ["edge", "core", "lab"][i % 3].to_string(),
            )]),
            registered_at: 0,
            cert_expires_at: 0,
            renewed_at: 0,
            capabilities: Default::default(),
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn render(clusters: usize, sample: usize, parallelism: usize) -> anyhow::Result<()> {
    let limits = Limits::default();
    let tools = Tools {
        helm: Some(flotilla_testkit::helm()),
        ..Tools::discover()
    };
    ensure!(
        tools.kustomize.is_some(),
        "kubectl or kustomize is needed on PATH"
    );
    let env = RenderEnv::new(&limits, &tools);
    let records = fleet(clusters);
    let t1 = tree("1111111111111111111111111111111111111111", 1);
    let manifest = load_manifest(&t1, &limits).context("bench manifest")?;
    let sample = sample.min(clusters);

    // Without memoization: every (cluster, app) on its own, on a sample of clusters.
    println!(
        "render, {clusters} clusters in 3 targets, 20 objects per app, parallelism {parallelism}"
    );
    println!("without memoization (each cluster rendered alone, {sample} clusters sampled):");
    let mut solo = Vec::new();
    for app in &manifest.apps {
        let started = Instant::now();
        let mut objects = Vec::new();
        for record in records.iter().take(sample) {
            let rendered = render_app(&t1, app, &cluster_info(record), &env)
                .with_context(|| format!("app {}", app.name))?
                .context("every cluster is targeted")?;
            objects.push(rendered.objects);
        }
        let per_cluster = started.elapsed() / sample as u32;
        println!(
            "  {:<10} {:>9.2} ms per cluster   = {:>9.0} ms for {clusters} clusters",
            app.name,
            ms(per_cluster),
            ms(per_cluster) * clusters as f64
        );
        solo.push(objects);
    }

    // With memoization: the controller's render, one app at a time, then the whole fleet.
    let stop = CancellationToken::new();
    let slots = RenderSlots::new(parallelism);
    let run = |tree: &RepoTree, apps: &[flotilla_hub::manifest::AppSpec], memo: &mut RenderMemo| {
        render_for_clusters(tree, apps, &records, "bench", &env, memo, &slots, &stop)
    };
    println!("with memoization (the controller's render_for_clusters, fresh memo):");
    for app in &manifest.apps {
        let mut memo = RenderMemo::default();
        let started = Instant::now();
        let (_, errors, counts) = run(&t1, std::slice::from_ref(app), &mut memo);
        let took = started.elapsed();
        ensure!(errors.is_empty(), "render errors: {errors:?}");
        ensure!(
            counts.assigned == clusters,
            "{} of {clusters} clusters got {}",
            counts.assigned,
            app.name
        );
        println!(
            "  {:<10} {:>9.1} ms for {clusters} clusters ({:.4} ms per cluster), {} renders ran",
            app.name,
            ms(took),
            ms(took) / clusters as f64,
            counts.ran
        );
    }
    let mut memo = RenderMemo::default();
    let started = Instant::now();
    let (rendered, errors, counts) = run(&t1, &manifest.apps, &mut memo);
    let first = started.elapsed();
    ensure!(errors.is_empty(), "render errors: {errors:?}");
    ensure!(
        rendered.clusters() == clusters,
        "{} of {clusters} clusters rendered",
        rendered.clusters()
    );
    for record in &records {
        let apps = rendered.apps_of(&record.id).context("cluster rendered")?;
        ensure!(
            apps.len() == 4,
            "cluster {} got {} apps",
            record.name,
            apps.len()
        );
        ensure!(
            apps.iter().all(|a| a.objects.len() == 20),
            "cluster {} got a short app",
            record.name
        );
    }
    for (a, app) in manifest.apps.iter().enumerate() {
        for (c, record) in records.iter().take(sample).enumerate() {
            let got = rendered.apps_of(&record.id).context("cluster rendered")?;
            let state = got
                .iter()
                .find(|s| s.name == app.name)
                .context("app rendered")?;
            let want: Vec<_> = solo[a][c]
                .iter()
                .map(|o| flotilla_common::digest::Digest::of(&o.canonical_bytes()))
                .collect();
            let have: Vec<_> = state.objects.iter().map(|o| o.digest).collect();
            ensure!(
                want == have,
                "memoized render of {} for {} differs from its own render",
                app.name,
                record.name
            );
        }
    }
    println!(
        "  all 4 apps, first commit: {:>9.0} ms total, {:.3} ms per cluster; {} (cluster, app) pairs from {} renders",
        ms(first),
        ms(first) / clusters as f64,
        counts.assigned,
        counts.ran,
    );
    // A commit that changes only the raw app.
    let t2 = tree("2222222222222222222222222222222222222222", 2);
    let manifest2 = load_manifest(&t2, &limits)?;
    let started = Instant::now();
    let (rendered2, errors, counts2) = run(&t2, &manifest2.apps, &mut memo);
    let second = started.elapsed();
    ensure!(errors.is_empty(), "render errors: {errors:?}");
    ensure!(rendered2.clusters() == clusters, "second render incomplete");
    ensure!(
        counts2.ran == 3,
        "a commit touching only the raw app ran {} renders, expected 3",
        counts2.ran
    );
    println!(
        "  next commit touching only `raw`: {:>9.0} ms total; {} renders ran",
        ms(second),
        counts2.ran
    );
    // The same commit again (a cluster registered, say): everything from the memo.
    let started = Instant::now();
    let (_, errors, counts3) = run(&t2, &manifest2.apps, &mut memo);
    ensure!(errors.is_empty() && counts3.ran == 0, "memo missed");
    println!(
        "  same commit again:  {:>9.0} ms total; 0 renders ran",
        ms(started.elapsed())
    );
    Ok(())
}
