//! Which hub endpoint the agent talks to, and which one next.
//!
//! The agent is given one or more hub URLs (`--hub`, repeated or comma-separated). Each URL's
//! host is resolved when a round of connection attempts starts; a name with several addresses
//! becomes several endpoints, in the resolver's order, all verified against the host name.
//! [`Rotation`] is the pure part: it walks the endpoints one at a time, moves on after each
//! failure, and waits a capped, jittered, growing delay only after a full round failed. Time
//! and randomness are passed in, so its schedule is tested without sockets or sleeps.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::retry::{RetryPolicy, jittered};

/// A validated hub URL, `https://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAddress {
    /// The URL as given, without a trailing slash.
    pub url: String,
    /// Its host: a DNS name or an IP address (without brackets); the TLS server name.
    pub host: String,
    /// Its port (443 when the URL names none).
    pub port: u16,
}

impl HubAddress {
    /// Parses and checks a hub URL: `https://`, a host, an optional port, no path.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?} must start with https://"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{url:?} must be https://HOST:PORT with no path"));
        }
        let uri: tonic::transport::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{url:?} names no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Some((_, port)) = authority.rsplit_once(':')
            && !authority.ends_with(']')
            && port.parse::<u16>().is_err()
        {
            return Err(format!("{url:?} has a port that is not a number"));
        }
        Ok(HubAddress {
            url: format!("https://{authority}"),
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(443),
        })
    }
}

impl fmt::Display for HubAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// One endpoint to try: a hub URL and one address its host resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The hub URL it came from.
    pub hub: HubAddress,
    /// The address to connect to, or why the host did not resolve (the connection then
    /// resolves the URL itself, and most likely fails).
    pub addr: Result<SocketAddr, String>,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Ok(addr) if self.hub.host.parse::<IpAddr>().is_err() => {
                write!(f, "{} ({addr})", self.hub)
            }
            _ => write!(f, "{}", self.hub),
        }
    }
}

/// The endpoints of `hubs` in order, given what each host resolved to (`lookups[i]` for
/// `hubs[i]`): each hub's addresses in the resolver's order, repeats dropped; a hub whose
/// host did not resolve stays in the list once, with the error.
pub fn candidates(
    hubs: &[HubAddress],
    lookups: Vec<Result<Vec<SocketAddr>, String>>,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for (hub, lookup) in hubs.iter().zip(lookups) {
        let addrs = match lookup {
            Ok(addrs) if addrs.is_empty() => Err(format!("{} resolves to no address", hub.host)),
            other => other,
        };
        match addrs {
            Ok(addrs) => {
                for addr in addrs {
                    let candidate = Candidate {
                        hub: hub.clone(),
                        addr: Ok(addr),
                    };
                    if !out.contains(&candidate) {
                        out.push(candidate);
                    }
                }
            }
            Err(e) => out.push(Candidate {
                hub: hub.clone(),
                addr: Err(e),
            }),
        }
    }
    out
}

/// Resolves every hub's host now and returns the endpoints in order (see [`candidates`]).
pub async fn resolve(hubs: &[HubAddress]) -> Vec<Candidate> {
    let mut lookups = Vec::with_capacity(hubs.len());
    for hub in hubs {
        let lookup = match hub.host.parse::<IpAddr>() {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, hub.port)]),
            Err(_) => tokio::net::lookup_host((hub.host.as_str(), hub.port))
                .await
                .map(Iterator::collect)
                .map_err(|e| format!("cannot resolve {}: {e}", hub.host)),
        };
        lookups.push(lookup);
    }
    candidates(hubs, lookups)
}

/// A round in which every endpoint failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundFailed {
    /// How many full rounds failed in a row, this one included.
    pub number: u32,
    /// The last error of each endpoint, in order, as `(endpoint, error)`.
    pub errors: Vec<(String, String)>,
}

/// What to do after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Set when a full round failed: wait this long before the next attempt.
    pub wait: Option<Duration>,
    /// The round that failed, for the one warning about it.
    pub round: Option<RoundFailed>,
    /// The next endpoint is the first again: resolve the hosts anew and [`Rotation::replace`].
    pub wrapped: bool,
}

/// Where the agent stands among its hub endpoints: the one in use, the failures since the
/// last connection that held, and how many full rounds failed in a row.
#[derive(Debug, Clone)]
pub struct Rotation<T> {
    items: Vec<T>,
    position: usize,
    policy: RetryPolicy,
    /// Failures since the last stable connection or the last full round.
    failures: usize,
    /// Full rounds failed in a row: the backoff attempt.
    rounds: u32,
    /// The last error of each endpoint in the current round.
    errors: Vec<(String, String)>,
    /// When the endpoint in use last proved to work, if it did since it was chosen.
    healthy_since: Option<Instant>,
}

impl<T: fmt::Display> Rotation<T> {
    /// Starts at the first of `items` (never empty: a hub that does not resolve is still one).
    /// Waits between failed rounds follow `policy`, jittered; a connection counts as stable,
    /// and so resets the waits, once it has worked for `policy.ceiling`.
    pub fn new(policy: RetryPolicy, items: Vec<T>) -> Self {
        assert!(!items.is_empty(), "a rotation needs at least one endpoint");
        Rotation {
            items,
            position: 0,
            policy,
            failures: 0,
            rounds: 0,
            errors: Vec::new(),
            healthy_since: None,
        }
    }

    /// The endpoint to use now.
    pub fn current(&self) -> &T {
        &self.items[self.position]
    }

    /// `(n, of)`: the current endpoint is the n-th (from 1) of `of`.
    pub fn place(&self) -> (usize, usize) {
        (self.position + 1, self.items.len())
    }

    /// Takes a fresh resolution of the endpoints and starts again at the first of them.
    pub fn replace(&mut self, items: Vec<T>) {
        if !items.is_empty() {
            self.items = items;
        }
        self.position = 0;
    }

    /// The current endpoint works (a stream opened); true the first time since it was chosen,
    /// which is when the switch is worth saying.
    pub fn healthy(&mut self, now: Instant) -> bool {
        if self.healthy_since.is_some() {
            return false;
        }
        self.healthy_since = Some(now);
        true
    }

    /// The current endpoint failed with `error`: moves to the next; after a full round of
    /// failures, says how long to wait first.
    pub fn failed(&mut self, error: String, now: Instant, rng: &mut impl Rng) -> Failover {
        // A connection that held long enough ends the outage count: losing it starts afresh.
        if let Some(since) = self.healthy_since.take()
            && now.saturating_duration_since(since) >= self.policy.ceiling
        {
            self.failures = 0;
            self.rounds = 0;
            self.errors.clear();
        }
        let label = self.current().to_string();
        match self.errors.iter_mut().find(|(l, _)| *l == label) {
            Some(slot) => slot.1 = error,
            None => self.errors.push((label, error)),
        }
        self.failures += 1;
        self.position += 1;
        let wrapped = self.position >= self.items.len();
        if wrapped {
            self.position = 0;
        }
        if self.failures < self.items.len() {
            return Failover {
                wait: None,
                round: None,
                wrapped,
            };
        }
        let wait = jittered(self.policy.delay(self.rounds), rng);
        self.rounds = self.rounds.saturating_add(1);
        self.failures = 0;
        Failover {
            wait: Some(wait),
            round: Some(RoundFailed {
                number: self.rounds,
                errors: std::mem::take(&mut self.errors),
            }),
            wrapped,
        }
    }
}

/// `endpoint: error; endpoint: error`, for the one warning about a failed round.
pub fn describe_round(round: &RoundFailed) -> String {
    round
        .errors
        .iter()
        .map(|(endpoint, error)| format!("{endpoint}: {error}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn hub(url: &str) -> HubAddress {
        HubAddress::parse(url).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hub_urls_are_parsed_into_host_and_port() {
        let cases = [
            ("https://hub.example:7443", "hub.example", 7443),
            ("https://hub.example:7443/", "hub.example", 7443),
            ("https://127.0.0.1:1", "127.0.0.1", 1),
            ("https://[::1]:7443", "::1", 7443),
            ("https://hub.example", "hub.example", 443),
        ];
        for (url, host, port) in cases {
            let parsed = hub(url);
            assert_eq!((parsed.host.as_str(), parsed.port), (host, port), "{url}");
            assert!(!parsed.url.ends_with('/'), "{url}");
        }
        for bad in [
            "http://h:1",
            "https://h:1/path",
            "https://",
            "h:1",
            "https://h:x",
        ] {
            assert!(HubAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_keep_the_hub_order_then_the_resolver_order() {
        let hubs = [
            hub("https://a.example:7443"),
            hub("https://b.example:7443"),
            hub("https://gone.example:7443"),
            hub("https://none.example:7443"),
        ];
        let got = candidates(
            &hubs,
            vec![
                Ok(vec![
                    addr("10.0.0.2:7443"),
                    addr("10.0.0.1:7443"),
                    addr("10.0.0.2:7443"),
                ]),
                Ok(vec![addr("10.0.0.9:7443")]),
                Err("cannot resolve gone.example: no such host".into()),
                Ok(vec![]),
            ],
        );
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "https://a.example:7443 (10.0.0.2:7443)",
                "https://a.example:7443 (10.0.0.1:7443)",
                "https://b.example:7443 (10.0.0.9:7443)",
                "https://gone.example:7443",
                "https://none.example:7443",
            ]
        );
        // Several addresses of one name keep that name for TLS.
        assert!(got[..2].iter().all(|c| c.hub.host == "a.example"));
        assert!(got[3].addr.as_ref().unwrap_err().contains("no such host"));
        assert!(got[4].addr.as_ref().unwrap_err().contains("no address"));
    }

    #[tokio::test]
    async fn resolving_at_connect_time_expands_names_and_keeps_ip_literals() {
        let hubs = [hub("https://127.0.0.1:7443"), hub("https://localhost:7444")];
        let got = resolve(&hubs).await;
        assert_eq!(got[0].addr, Ok(addr("127.0.0.1:7443")));
        assert_eq!(got[0].to_string(), "https://127.0.0.1:7443");
        // localhost is one or two addresses (IPv4, IPv6) depending on the machine.
        let local: Vec<&Candidate> = got[1..].iter().collect();
        assert!(!local.is_empty());
        for c in local {
            let a = c.addr.as_ref().unwrap();
            assert!(a.ip().is_loopback() && a.port() == 7444, "{a}");
            assert_eq!(c.hub.host, "localhost");
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            first: Duration::from_millis(200),
            ceiling: Duration::from_secs(10),
        }
    }

    #[test]
    fn failures_move_along_in_order_and_only_full_rounds_wait() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut r = Rotation::new(policy(), vec!["a", "b", "c"]);
        assert_eq!((*r.current(), r.place()), ("a", (1, 3)));
        let step = r.failed("refused".into(), t0, &mut rng);
        assert_eq!((step.wait, step.wrapped), (None, false));
        assert_eq!((*r.current(), r.place()), ("b", (2, 3)));
        assert!(r.failed("refused".into(), t0, &mut rng).wait.is_none());
        assert_eq!(*r.current(), "c");
        let step = r.failed("timed out".into(), t0, &mut rng);
        assert!(step.wrapped);
        let wait = step.wait.expect("a full round waits");
        assert!(wait >= Duration::from_millis(100) && wait <= Duration::from_millis(200));
        let round = step.round.unwrap();
        assert_eq!(round.number, 1);
        assert_eq!(
            describe_round(&round),
            "a: refused; b: refused; c: timed out"
        );
        assert_eq!(*r.current(), "a");

        // The waits between failed rounds grow, jittered, up to the ceiling.
        let mut waits = Vec::new();
        for _ in 0..30 {
            let steps: Vec<Failover> = (0..3)
                .map(|_| r.failed("refused".into(), t0, &mut rng))
                .collect();
            assert!(steps[..2].iter().all(|s| s.wait.is_none()));
            waits.push(steps[2].wait.unwrap());
        }
        for (i, wait) in waits.iter().enumerate() {
            let full = policy().delay(i as u32 + 1);
            assert!(
                *wait >= full / 2 && *wait <= full,
                "round {}: {wait:?}",
                i + 2
            );
            assert!(*wait <= policy().ceiling);
        }
        assert!(waits[20..].iter().all(|w| *w >= policy().ceiling / 2));
    }

    #[test]
    fn a_connection_that_held_resets_the_waits_and_a_flapping_one_does_not() {
        let mut rng = StdRng::seed_from_u64(5);
        let t0 = Instant::now();
        let mut r = Rotation::new(policy(), vec!["a", "b"]);
        for _ in 0..8 {
            r.failed("refused".into(), t0, &mut rng);
        }
        assert_eq!(*r.current(), "a");
        // "a" opens a stream (said once), then drops it at once: no reset, so when "b" fails
        // too the round waits at the grown delay.
        assert!(r.healthy(t0));
        assert!(!r.healthy(t0), "said once per switch");
        r.failed("reset".into(), t0 + Duration::from_secs(1), &mut rng);
        let step = r.failed("refused".into(), t0, &mut rng);
        assert_eq!(step.round.as_ref().unwrap().number, 5);
        assert!(step.wait.unwrap() >= policy().delay(4) / 2);

        // "a" works for longer than the ceiling, then breaks: move to "b" at once, and the
        // next full round waits the first delay again.
        assert!(r.healthy(t0));
        let later = t0 + Duration::from_secs(60);
        let step = r.failed("stream broke".into(), later, &mut rng);
        assert_eq!(step.wait, None);
        assert_eq!(*r.current(), "b");
        let step = r.failed("refused".into(), later, &mut rng);
        assert_eq!(step.round.as_ref().unwrap().number, 1);
        assert!(step.wait.unwrap() <= policy().first);
    }

    #[test]
    fn one_endpoint_waits_after_every_failure_and_replace_starts_over() {
        let mut rng = StdRng::seed_from_u64(9);
        let t0 = Instant::now();
        let mut r = Rotation::new(policy(), vec!["only"]);
        let step = r.failed("refused".into(), t0, &mut rng);
        assert!(step.wrapped && step.wait.is_some());
        assert_eq!(
            step.round.unwrap().errors,
            [("only".into(), "refused".into())]
        );
        r.replace(vec!["x", "y"]);
        assert_eq!((*r.current(), r.place()), ("x", (1, 2)));
        r.replace(Vec::new());
        assert_eq!(r.place(), (1, 2), "an empty resolution keeps the last");
    }
}
