//! Metric-gated stages (issue 16): a stage's `analysis:` queries, as Prometheus templates, rendered
//! for the cluster, app and stage, sent to the Prometheus of hub.yaml (`analysis.prometheus`) and
//! judged against their thresholds.
//!
//! Rendering and judging are pure; [`measure`] is the one call to Prometheus (an instant query,
//! `POST /api/v1/query`). A measurement is:
//! - **pass** when every series the query returns is within `min`..`max`;
//! - **fail** when one is not, or when Prometheus refuses the query as malformed (`bad_data`: it
//!   will never pass);
//! - **inconclusive** when there is no answer to judge: Prometheus unreachable, timing out, failing
//!   (5xx) or refusing to run the query (`execution`, `timeout`, `canceled`), a result that is not an
//!   instant vector or a scalar, or no series (with `noData: inconclusive`, the default). `NaN`
//!   values (0/0: a rate with no traffic) count as no data.
//!
//! The engine ([`crate::rollout`]) never lets a stage complete on anything but a pass, and fails it
//! after `inconclusiveLimit` inconclusive measurements in a row.

use std::time::Duration;

use flotilla_common::labels::Labels;
use serde::{Deserialize, Serialize};

use crate::config::AnalysisSettings;
use crate::manifest::{AnalysisQuery, NoData};

/// What one measurement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Within the thresholds.
    Pass,
    /// Outside them, or a query Prometheus cannot parse.
    Fail,
    /// Nothing to judge.
    Inconclusive,
}

impl Outcome {
    /// `pass`, `fail` or `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        }
    }
}

/// Most bytes of a Prometheus answer read.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Checks that a query template parses (a manifest with one that does not is refused).
pub fn check_template(query: &str) -> Result<(), String> {
    env()
        .template_from_str(query)
        .map(|_| ())
        .map_err(|e| format!("the query template does not parse: {e}"))
}

/// Whether the query names `cluster`, and so is measured for each cluster of its stage.
pub fn per_cluster(query: &str) -> bool {
    env()
        .template_from_str(query)
        .map(|t| t.undeclared_variables(false).contains("cluster"))
        .unwrap_or(false)
}

/// The cluster a per-cluster query is rendered for.
#[derive(Debug, Clone, Copy)]
pub struct ClusterVars<'a> {
    /// Name.
    pub name: &'a str,
    /// Id.
    pub id: &'a str,
    /// Labels.
    pub labels: &'a Labels,
}

/// The PromQL of `query` for `cluster` (when it names one), `app` and `stage`.
pub fn render(
    query: &str,
    cluster: Option<ClusterVars<'_>>,
    app: &str,
    stage: &str,
) -> Result<String, String> {
    let mut ctx = serde_json::json!({
        "app": {"name": app},
        "stage": {"name": stage},
    });
    if let Some(c) = cluster {
        ctx["cluster"] = serde_json::json!({"name": c.name, "id": c.id, "labels": c.labels});
    }
    env()
        .render_str(query, minijinja::Value::from(minijinja::value::Serde(ctx)))
        .map_err(|e| format!("the query template does not render: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

fn threshold(q: &AnalysisQuery) -> String {
    match (q.min, q.max) {
        (Some(min), Some(max)) => format!("between {min} and {max}"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => "any value".into(),
    }
}

fn series_name(metric: &serde_json::Value) -> String {
    let Some(labels) = metric.as_object().filter(|m| !m.is_empty()) else {
        return String::new();
    };
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or_default()))
        .collect();
    format!(" for {{{}}}", parts.join(", "))
}

fn no_data(q: &AnalysisQuery, why: &str) -> (Outcome, String) {
    let outcome = match q.no_data {
        NoData::Inconclusive => Outcome::Inconclusive,
        NoData::Fail => Outcome::Fail,
        NoData::Pass => Outcome::Pass,
    };
    (
        outcome,
        format!("{why} (noData: {})", outcome_word(q.no_data)),
    )
}

fn outcome_word(n: NoData) -> &'static str {
    match n {
        NoData::Inconclusive => "inconclusive",
        NoData::Fail => "fail",
        NoData::Pass => "pass",
    }
}

/// Judges Prometheus' answer (`status`, body) to `q`.
pub fn judge(status: u16, body: &[u8], q: &AnalysisQuery) -> (Outcome, String) {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) if !(200..300).contains(&status) => {
            return (
                Outcome::Inconclusive,
                format!("Prometheus answered HTTP {status}"),
            );
        }
        Err(e) => {
            return (
                Outcome::Inconclusive,
                format!("Prometheus' answer is not its API's JSON: {e}"),
            );
        }
    };
    if answer.status != "success" {
        return if answer.error_type == "bad_data" {
            (
                Outcome::Fail,
                format!("Prometheus refuses the query: {}", answer.error),
            )
        } else {
            (
                Outcome::Inconclusive,
                format!(
                    "Prometheus could not run the query ({}): {}",
                    answer.error_type, answer.error
                ),
            )
        };
    }
    let Some(data) = answer.data else {
        return (
            Outcome::Inconclusive,
            "Prometheus' answer has no data".into(),
        );
    };
    let mut values: Vec<(String, f64)> = Vec::new();
    let parse = |v: &serde_json::Value| v.get(1).and_then(|s| s.as_str()).map(parse_value);
    match data.result_type.as_str() {
        "scalar" => {
            if let Some(v) = parse(&data.result).flatten() {
                values.push((String::new(), v));
            }
        }
        "vector" => {
            for series in data.result.as_array().into_iter().flatten() {
                if let Some(v) = series.get("value").and_then(parse).flatten() {
                    values.push((series_name(&series["metric"]), v));
                }
            }
        }
        other => {
            return (
                Outcome::Inconclusive,
                format!("the query returns a {other}, not an instant vector or a scalar"),
            );
        }
    }
    let values: Vec<(String, f64)> = values.into_iter().filter(|(_, v)| !v.is_nan()).collect();
    if values.is_empty() {
        return no_data(q, "the query returned no series");
    }
    for (series, v) in &values {
        let low = q.min.is_some_and(|min| *v < min);
        let high = q.max.is_some_and(|max| *v > max);
        if low || high {
            return (
                Outcome::Fail,
                format!("value {v}{series} is not {}", threshold(q)),
            );
        }
    }
    let shown: Vec<String> = values.iter().take(3).map(|(_, v)| v.to_string()).collect();
    (
        Outcome::Pass,
        format!(
            "value {}{} is {}",
            shown.join(", "),
            if values.len() > 3 { ", …" } else { "" },
            threshold(q)
        ),
    )
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// A client for `analysis.prometheus`.
#[derive(Clone)]
pub struct Prometheus {
    settings: AnalysisSettings,
    client: reqwest::Client,
}

impl Prometheus {
    /// A client for the configured Prometheus.
    pub fn new(settings: &AnalysisSettings) -> Result<Self, String> {
        crate::source::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirect could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read analysis.caFile {}: {e}", path.display()))?;
            for cert in crate::source::parse_ca_bundle(&pem)
                .map_err(|e| format!("analysis.caFile {}: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot make a client for analysis.prometheus: {e}"))?;
        Ok(Prometheus {
            settings: settings.clone(),
            client,
        })
    }

    /// Time box of one query.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }
}

/// One measurement of `q` (rendered as `promql`) against `prometheus`; without one configured, it is
/// inconclusive.
pub async fn measure(
    prometheus: Option<&Prometheus>,
    promql: &str,
    q: &AnalysisQuery,
) -> (Outcome, String) {
    let Some(p) = prometheus else {
        return (
            Outcome::Inconclusive,
            "no Prometheus is configured (analysis.prometheus in hub.yaml)".into(),
        );
    };
    let url = format!("{}/api/v1/query", p.settings.prometheus);
    let form: String = url_form(&[("query", promql)]);
    let mut request = p
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json");
    if let Some(path) = &p.settings.bearer_token_file {
        match std::fs::read_to_string(path) {
            Ok(token) if !token.trim().is_empty() => {
                request = request.bearer_auth(token.trim());
            }
            Ok(_) => {
                return (
                    Outcome::Inconclusive,
                    format!("analysis.bearerTokenFile {} is empty", path.display()),
                );
            }
            Err(e) => {
                return (
                    Outcome::Inconclusive,
                    format!(
                        "cannot read analysis.bearerTokenFile {}: {e}",
                        path.display()
                    ),
                );
            }
        }
    }
    let sent = request.body(form).send().await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return (
                Outcome::Inconclusive,
                if e.is_timeout() {
                    format!("Prometheus did not answer within {:?}", p.settings.timeout)
                } else {
                    format!(
                        "Prometheus at {} cannot be reached: {}",
                        crate::source::RedactedUrl(&p.settings.prometheus),
                        crate::source::chain(&e.without_url())
                    )
                },
            );
        }
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return (
                        Outcome::Inconclusive,
                        format!("Prometheus' answer is over {MAX_ANSWER_BYTES} bytes"),
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return (
                    Outcome::Inconclusive,
                    format!(
                        "reading Prometheus' answer failed: {}",
                        crate::source::chain(&e.without_url())
                    ),
                );
            }
        }
    }
    judge(status, &body, q)
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn url_form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(min: Option<f64>, max: Option<f64>, no_data: NoData) -> AnalysisQuery {
        AnalysisQuery {
            name: "errors".into(),
            query: "x".into(),
            min,
            max,
            no_data,
        }
    }

    #[test]
    fn templates_name_the_cluster_app_and_stage() {
        let labels = Labels::from([("region".to_string(), "eu".to_string())]);
        let c = ClusterVars {
            name: "edge-1",
            id: "c-1",
            labels: &labels,
        };
        let t = r#"rate(errors{cluster="{{ cluster.name }}",region="{{ cluster.labels.region }}",app="{{ app.name }}"}[1m])"#;
        assert!(per_cluster(t));
        assert!(!per_cluster("sum(up{job=\"{{ app.name }}\"})"));
        assert_eq!(
            render(t, Some(c), "web", "canary").unwrap(),
            r#"rate(errors{cluster="edge-1",region="eu",app="web"}[1m])"#
        );
        let e = render("{{ cluster.nope }}", Some(c), "web", "canary").unwrap_err();
        assert!(e.contains("does not render"), "{e}");
        let e = check_template("up{a=\"{{ cluster.name \"}").unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
    }

    #[test]
    fn answers_are_judged_against_thresholds() {
        let vector = |values: &[&str]| {
            let series: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1.5,"{v}"]}}"#))
                .collect();
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
                series.join(",")
            )
        };
        let max = q(None, Some(0.05), NoData::Inconclusive);
        let (o, d) = judge(200, vector(&["0.01", "0.02"]).as_bytes(), &max);
        assert_eq!(o, Outcome::Pass, "{d}");
        assert_eq!(d, "value 0.01, 0.02 is at most 0.05");
        let (o, d) = judge(200, vector(&["0.01", "0.2"]).as_bytes(), &max);
        assert_eq!(
            (o, d.as_str()),
            (
                Outcome::Fail,
                "value 0.2 for {pod=\"p1\"} is not at most 0.05"
            )
        );
        let (o, d) = judge(200, vector(&[]).as_bytes(), &max);
        assert_eq!(o, Outcome::Inconclusive);
        assert_eq!(d, "the query returned no series (noData: inconclusive)");
        let (o, _) = judge(200, vector(&["NaN"]).as_bytes(), &max);
        assert_eq!(o, Outcome::Inconclusive, "NaN is no data");
        assert_eq!(
            judge(
                200,
                vector(&[]).as_bytes(),
                &q(None, Some(1.0), NoData::Fail)
            )
            .0,
            Outcome::Fail
        );
        assert_eq!(
            judge(
                200,
                vector(&[]).as_bytes(),
                &q(None, Some(1.0), NoData::Pass)
            )
            .0,
            Outcome::Pass
        );
        let min = q(Some(0.99), None, NoData::Inconclusive);
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"0.5"]}}"#;
        let (o, d) = judge(200, scalar, &min);
        assert_eq!(
            (o, d.as_str()),
            (Outcome::Fail, "value 0.5 is not at least 0.99")
        );
        let bad = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected \")\""}"#;
        let (o, d) = judge(400, bad, &max);
        assert_eq!(o, Outcome::Fail);
        assert!(
            d.starts_with("Prometheus refuses the query: invalid parameter"),
            "{d}"
        );
        let busy = br#"{"status":"error","errorType":"execution","error":"query processing would load too many samples"}"#;
        assert_eq!(judge(422, busy, &max).0, Outcome::Inconclusive);
        let (o, d) = judge(502, b"<html>bad gateway</html>", &max);
        assert_eq!(
            (o, d.as_str()),
            (Outcome::Inconclusive, "Prometheus answered HTTP 502")
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let (o, d) = judge(200, matrix, &max);
        assert_eq!(o, Outcome::Inconclusive);
        assert!(d.contains("matrix"), "{d}");
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            url_form(&[("query", "sum(rate(x{a=\"b c\"}[1m])) > 0.5")]),
            "query=sum%28rate%28x%7Ba%3D%22b+c%22%7D%5B1m%5D%29%29+%3E+0.5"
        );
    }
}
