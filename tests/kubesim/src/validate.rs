//! The object-name validation the real API server applies.

use crate::error::ApiError;
use crate::resource::ResourceType;

/// Kinds whose names must be DNS-1123 labels rather than subdomains.
const LABEL_NAMED: &[&str] = &["Namespace", "Service"];

/// Checks a name as the API server does (RFC 1123 subdomain, or label for namespaces and services).
pub fn name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let label = LABEL_NAMED.contains(&rt.kind.as_str()) && rt.group.is_empty();
    let max = if label { 63 } else { 253 };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok_char = |c: char| alnum(c) || c == '-' || (!label && c == '.');
    let valid = !name.is_empty()
        && name.len() <= max
        && name.chars().all(ok_char)
        && name.starts_with(alnum)
        && name.ends_with(alnum);
    if valid {
        return Ok(());
    }
    let rule = if label {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    };
    Err(ApiError::invalid(
        &rt.kind,
        name,
        "metadata.name",
        &format!("Invalid value: \"{name}\": {rule}"),
    ))
}
