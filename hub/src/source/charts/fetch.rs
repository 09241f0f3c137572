//! The HTTPS side of a chart resolve: repository URLs (https only, relative archive URLs, which origin gets
//! the token) and GETs bounded by size and by the resolve's deadline.

use std::io::Read;
use std::time::Instant;

use reqwest::Url;

use super::{ChartError, ChartRepoAccess};
use crate::source::{chain, install_crypto_provider, parse_ca_bundle, redact_url};

/// A chart repository URL checked to be https, with the base that relative URLs resolve against.
#[derive(Debug)]
pub(super) struct RepoUrl {
    /// The URL with a trailing slash on its path.
    base: Url,
    /// For messages: the URL as configured, user info redacted.
    pub(super) display: String,
}

impl RepoUrl {
    pub(super) fn parse(text: &str) -> Result<RepoUrl, ChartError> {
        let display = redact_url(text);
        let what = "chart repository URL".to_string();
        let mut base = Url::parse(text).map_err(|e| ChartError::InvalidUrl {
            what: what.clone(),
            url: display.clone(),
            message: e.to_string(),
        })?;
        require_https(&base, &what, &display)?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_fragment(None);
        Ok(RepoUrl { base, display })
    }

    pub(super) fn index_url(&self) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.join("index.yaml")
            .expect("a relative path joins any https URL")
    }

    /// Resolves an archive URL from the index against the repository URL.
    pub(super) fn resolve(&self, reference: &str, what: &str) -> Result<Url, ChartError> {
        let url = self
            .base
            .join(reference)
            .map_err(|e| ChartError::InvalidUrl {
                what: what.to_string(),
                url: redact_url(reference),
                message: e.to_string(),
            })?;
        require_https(&url, what, &redact_url(url.as_str()))?;
        Ok(url)
    }

    /// Whether `url` has the repository's scheme, host and port, so it may get the token.
    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str().map(str::to_ascii_lowercase)
                == self.base.host_str().map(str::to_ascii_lowercase)
            && url.port_or_known_default() == self.base.port_or_known_default()
    }
}

fn require_https(url: &Url, what: &str, display: &str) -> Result<(), ChartError> {
    if url.scheme() != "https" {
        return Err(ChartError::NotHttps {
            what: what.to_string(),
            url: display.to_string(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ChartError::InvalidUrl {
            what: what.to_string(),
            url: display.to_string(),
            message: "it names no host".into(),
        });
    }
    Ok(())
}

/// What a GET is for, which sets its limit and its messages.
#[derive(Clone, Copy)]
pub(super) enum Body {
    Index,
    Archive,
}

impl Body {
    fn what(self) -> &'static str {
        match self {
            Body::Index => "index.yaml",
            Body::Archive => "the chart archive",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Body::Index => "maxIndexBytes",
            Body::Archive => "maxChartBytes",
        }
    }
}

/// The HTTPS client of one resolve: its deadline, the token and where it may go.
pub(super) struct Fetcher<'a> {
    client: reqwest::blocking::Client,
    repo: &'a RepoUrl,
    access: &'a ChartRepoAccess,
    deadline: Instant,
}

impl<'a> Fetcher<'a> {
    pub(super) fn new(repo: &'a RepoUrl, access: &'a ChartRepoAccess) -> Result<Self, ChartError> {
        let deadline = Instant::now() + access.timeout;
        let certs = access
            .ca_pem
            .as_deref()
            .map(parse_ca_bundle)
            .transpose()
            .map_err(|message| ChartError::CaBundle {
                repo: repo.display.clone(),
                message,
            })?
            .unwrap_or_default();
        install_crypto_provider();
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("flotilla-hub/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(certs)
            // Also refuses a redirect to plain http. reqwest drops `Authorization` on a redirect to
            // another scheme, host or port, so the token never follows one.
            .https_only(true)
            .redirect(reqwest::redirect::Policy::limited(10))
            // Each request also gets the time left of the resolve; this only replaces reqwest's own 30 s.
            .timeout(access.timeout)
            .build()
            .map_err(|e| ChartError::Client {
                repo: repo.display.clone(),
                message: chain(&e),
            })?;
        Ok(Fetcher {
            client,
            repo,
            access,
            deadline,
        })
    }

    fn token_for(&self, url: &Url) -> Option<&str> {
        self.access
            .token
            .as_deref()
            .filter(|t| !t.is_empty() && self.repo.same_origin(url))
    }

    fn timed_out(&self, url: &Url) -> ChartError {
        ChartError::TimedOut {
            url: redact_url(url.as_str()),
            timeout: self.access.timeout,
        }
    }

    /// GETs `url` and reads its body, at most `limit` bytes, by the resolve's deadline.
    pub(super) fn get(&self, url: &Url, body: Body) -> Result<Vec<u8>, ChartError> {
        let limit = match body {
            Body::Index => self.access.max_index_bytes,
            Body::Archive => self.access.max_chart_bytes,
        };
        let display = redact_url(url.as_str());
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out(url));
        }
        let mut request = self.client.get(url.clone()).timeout(left);
        let token = self.token_for(url);
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ChartError::Client {
                    repo: self.repo.display.clone(),
                    message: "the token is not a valid HTTP header value".into(),
                })?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = request.send().map_err(|e| self.transport_error(url, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ChartError::Status {
                url: display,
                status: status.to_string(),
                hint: self.status_hint(status, token.is_some(), response.url(), body),
            });
        }
        let too_large = || ChartError::TooLarge {
            what: body.what(),
            url: display.clone(),
            setting: body.setting(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        response
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| {
                let timed_out = Instant::now() >= self.deadline
                    || e.kind() == std::io::ErrorKind::TimedOut
                    || e.get_ref()
                        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                        .is_some_and(reqwest::Error::is_timeout);
                if timed_out {
                    self.timed_out(url)
                } else {
                    ChartError::Request {
                        url: display.clone(),
                        message: self.scrub(&chain(&e)),
                    }
                }
            })?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(bytes)
    }

    fn transport_error(&self, url: &Url, e: reqwest::Error) -> ChartError {
        if e.is_timeout() || Instant::now() >= self.deadline {
            return self.timed_out(url);
        }
        let refused_redirect = e.is_redirect().then(|| refused_redirect(&e)).flatten();
        let mut message = self.scrub(&chain(&e.without_url()));
        if let Some(target) = refused_redirect {
            message = format!(
                "it redirects to {target}, which is not https://, and such a redirect is refused"
            );
        } else if message.contains("UnknownIssuer") {
            message.push_str(
                " (the server's certificate is not signed by a trusted CA; set the chart repository's caFile to the CA that issued it)",
            );
        }
        ChartError::Request {
            url: redact_url(url.as_str()),
            message,
        }
    }

    fn status_hint(
        &self,
        status: reqwest::StatusCode,
        sent_token: bool,
        answered_by: &Url,
        body: Body,
    ) -> String {
        use reqwest::StatusCode as S;
        let elsewhere = !self.repo.same_origin(answered_by);
        match status {
            S::UNAUTHORIZED | S::FORBIDDEN if elsewhere => format!(
                " from {}, which is not the chart repository's host and so does not get its token",
                redact_url(answered_by.as_str())
            ),
            S::UNAUTHORIZED | S::FORBIDDEN if sent_token => {
                " (the chart repository's token was not accepted)".into()
            }
            S::UNAUTHORIZED | S::FORBIDDEN if self.access.token.is_some() => {
                " (this URL is not on the chart repository's host, so it does not get its token)"
                    .into()
            }
            S::UNAUTHORIZED | S::FORBIDDEN => {
                " (the chart repository requires authentication and has no token; set its tokenFile)"
                    .into()
            }
            S::NOT_FOUND if matches!(body, Body::Index) => format!(
                " (is {} a Helm chart repository? its index.yaml is missing)",
                self.repo.display
            ),
            _ => String::new(),
        }
    }

    /// Removes the token and the user info of any URL from a transport message (reqwest marks the header
    /// sensitive; this is the belt).
    fn scrub(&self, message: &str) -> String {
        let message = redact_urls_in(message);
        match self.access.token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => message.replace(token, "***"),
            None => message,
        }
    }
}

/// The non-https target of a redirect that `https_only` refused: reqwest names it on the inner error.
fn refused_redirect(e: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(url) = s
            .downcast_ref::<reqwest::Error>()
            .and_then(reqwest::Error::url)
            .filter(|u| u.scheme() != "https")
        {
            return Some(redact_url(url.as_str()));
        }
        source = s.source();
    }
    None
}

/// `text` with the user info of every URL in it replaced, as [`redact_url`] does for one URL.
fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | ')' | '(' | '"' | '\'') || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_lose_their_user_info() {
        let cases = [
            (
                "builder error for url (http://u:p@host/x): no",
                "builder error for url (http://***@host/x): no",
            ),
            (
                "https://tok@host and https://host/a@b",
                "https://***@host and https://host/a@b",
            ),
            ("no url here", "no url here"),
            ("ends with https://u@h", "ends with https://***@h"),
        ];
        for (text, want) in cases {
            assert_eq!(redact_urls_in(text), want, "{text}");
        }
    }

    #[test]
    fn archive_urls_resolve_against_the_repository() {
        let cases = [
            (
                "https://charts.example/stable",
                "podinfo-1.0.0.tgz",
                "https://charts.example/stable/podinfo-1.0.0.tgz",
            ),
            (
                "https://charts.example/stable/",
                "podinfo-1.0.0.tgz",
                "https://charts.example/stable/podinfo-1.0.0.tgz",
            ),
            (
                "https://charts.example/stable",
                "charts/p.tgz",
                "https://charts.example/stable/charts/p.tgz",
            ),
            (
                "https://charts.example/stable",
                "/abs/p.tgz",
                "https://charts.example/abs/p.tgz",
            ),
            (
                "https://charts.example/stable",
                "../other/p.tgz",
                "https://charts.example/other/p.tgz",
            ),
            (
                "https://charts.example",
                "p.tgz",
                "https://charts.example/p.tgz",
            ),
            (
                "https://charts.example:8443/a/b",
                "p.tgz",
                "https://charts.example:8443/a/b/p.tgz",
            ),
            (
                "https://charts.example/stable",
                "https://cdn.example/p.tgz",
                "https://cdn.example/p.tgz",
            ),
            (
                "https://charts.example/stable",
                "//cdn.example/p.tgz",
                "https://cdn.example/p.tgz",
            ),
        ];
        for (repo, reference, want) in cases {
            let repo = RepoUrl::parse(repo).unwrap();
            assert_eq!(
                repo.resolve(reference, "archive").unwrap().as_str(),
                want,
                "{reference}"
            );
        }
        let repo = RepoUrl::parse("https://charts.example/stable?x=1").unwrap();
        assert_eq!(
            repo.index_url().as_str(),
            "https://charts.example/stable/index.yaml"
        );
        let repo = RepoUrl::parse("https://charts.example/stable").unwrap();
        let err = repo
            .resolve("http://charts.example/p.tgz", "the archive")
            .unwrap_err();
        assert!(matches!(err, ChartError::NotHttps { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("the archive http://charts.example/p.tgz is not https://"),
            "{err}"
        );
    }

    #[test]
    fn repository_urls_must_be_https_and_are_shown_redacted() {
        let repo = RepoUrl::parse("https://user:s3cret@charts.example/stable").unwrap();
        assert_eq!(repo.display, "https://***@charts.example/stable");
        assert_eq!(
            repo.index_url().as_str(),
            "https://user:s3cret@charts.example/stable/index.yaml"
        );
        let cases = [
            ("http://charts.example/stable", "is not https://"),
            (
                "http://user:s3cret@charts.example",
                "http://***@charts.example is not https://",
            ),
            ("oci://registry.example/charts", "is not https://"),
            ("charts.example/stable", "is not a valid URL"),
            ("https://", "is not a valid URL"),
        ];
        for (url, want) in cases {
            let err = RepoUrl::parse(url).unwrap_err().to_string();
            assert!(
                err.contains(want) && !err.contains("s3cret"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn the_token_goes_to_the_repository_s_origin_only() {
        let repo = RepoUrl::parse("https://Charts.Example/stable").unwrap();
        let cases = [
            ("https://charts.example/other/p.tgz", true),
            ("https://charts.example:443/p.tgz", true),
            ("https://charts.example:8443/p.tgz", false),
            ("https://cdn.example/p.tgz", false),
            ("https://charts.example.evil/p.tgz", false),
        ];
        for (url, want) in cases {
            assert_eq!(repo.same_origin(&Url::parse(url).unwrap()), want, "{url}");
        }
    }
}
