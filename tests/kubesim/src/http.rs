//! HTTP plumbing: bodies, JSON responses, query strings, and parsing resource paths.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::Value;

use crate::error::ApiError;

/// Response body type of every handler.
pub type Body = BoxBody<Bytes, Infallible>;

/// A JSON response.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    bytes_response(status, "application/json", Bytes::from(value.to_string()))
}

/// A response with a body and content type.
pub fn bytes_response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header("Cache-Control", "no-cache, private")
        .body(Full::new(body).boxed())
        .expect("valid response")
}

/// The `kind: Status` response of an error.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &err.to_status())
}

/// Query parameters (last value wins).
#[derive(Debug, Clone, Default)]
pub struct Query(HashMap<String, String>);

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k), percent_decode(v));
        }
        Self(map)
    }

    /// A parameter's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// A request for objects of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Resource plural.
    pub plural: String,
    /// Object name, if one object is addressed.
    pub name: Option<String>,
    /// Subresource (`status`).
    pub subresource: Option<String>,
    /// `/watch/` legacy prefix used.
    pub watch_prefix: bool,
}

/// What an `/api` or `/apis` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiPath {
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`.
    GroupVersion(String, String),
    /// Objects of a resource.
    Resource(ResourcePath),
}

/// Parses `/api/v1/...` and `/apis/{g}/{v}/...`; `namespaced` says whether a plural is a namespaced
/// resource, to tell `namespaces/{ns}/{plural}` from `namespaces/{name}/status`.
pub fn parse_api_path(
    path: &str,
    namespaced: impl Fn(&str, &str, &str) -> bool,
) -> Option<ApiPath> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let (group, version, rest) = match segs.first()?.as_str() {
        "api" => (String::new(), segs.get(1)?.clone(), &segs[2..]),
        "apis" => {
            let group = segs.get(1)?.clone();
            match segs.get(2) {
                None => return Some(ApiPath::Group(group)),
                Some(v) => (group, v.clone(), &segs[3..]),
            }
        }
        _ => return None,
    };
    if rest.is_empty() {
        return Some(ApiPath::GroupVersion(group, version));
    }
    let (watch_prefix, rest) = if rest[0] == "watch" {
        (true, &rest[1..])
    } else {
        (false, rest)
    };
    let (namespace, rest) =
        if rest.len() >= 3 && rest[0] == "namespaces" && namespaced(&group, &version, &rest[2]) {
            (Some(rest[1].clone()), &rest[2..])
        } else {
            (None, rest)
        };
    if rest.is_empty() || rest.len() > 3 || rest.iter().any(String::is_empty) {
        return None;
    }
    Some(ApiPath::Resource(ResourcePath {
        group,
        version,
        namespace,
        plural: rest[0].clone(),
        name: rest.get(1).cloned(),
        subresource: rest.get(2).cloned(),
        watch_prefix,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(_: &str, _: &str, plural: &str) -> bool {
        plural == "configmaps"
    }

    #[test]
    fn paths_parse_like_the_api_server() {
        let p = parse_api_path("/api/v1/namespaces/default/configmaps/a", ns).unwrap();
        let ApiPath::Resource(r) = p else { panic!() };
        assert_eq!(
            (r.namespace.as_deref(), r.plural.as_str(), r.name.as_deref()),
            (Some("default"), "configmaps", Some("a"))
        );
        let ApiPath::Resource(r) = parse_api_path("/api/v1/namespaces/foo/status", ns).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                r.plural.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("foo"), Some("status"))
        );
        assert_eq!(
            parse_api_path("/apis/apps/v1", ns),
            Some(ApiPath::GroupVersion("apps".into(), "v1".into()))
        );
        assert_eq!(
            parse_api_path("/apis/apps", ns),
            Some(ApiPath::Group("apps".into()))
        );
        let ApiPath::Resource(r) =
            parse_api_path("/api/v1/watch/namespaces/x/configmaps", ns).unwrap()
        else {
            panic!()
        };
        assert!(r.watch_prefix && r.name.is_none());
        assert_eq!(
            Query::parse(Some("labelSelector=a%3Db%2Cc+in+(d)&watch=1")).get("labelSelector"),
            Some("a=b,c in (d)")
        );
    }
}
