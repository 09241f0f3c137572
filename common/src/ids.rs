//! Identifiers and names: clusters, apps, sources.

/// A name or id that does not follow the DNS-label rules we require.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid {what} {value:?}: use 1-63 characters from a-z, 0-9 and '-', starting and ending with a letter or digit"
)]
pub struct NameError {
    /// What kind of name it was ("cluster name", "app name").
    pub what: &'static str,
    /// The rejected value.
    pub value: String,
}

/// Checks that `value` is an RFC 1123 DNS label, the form every Flotilla name takes.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            value: value.to_string(),
        })
    }
}

/// Builds a new cluster id, `c-` followed by 16 hex digits from the given random bytes.
///
/// Randomness is a parameter so this stays pure; callers pass bytes from the OS RNG.
pub fn cluster_id_from(random: [u8; 8]) -> String {
    format!("c-{}", hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "edge-1", "c-0123456789abcdef"] {
            assert!(validate_name("x", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(validate_name("x", bad).is_err(), "{bad}");
        }
        assert_eq!(cluster_id_from([0xab; 8]), "c-abababababababab");
    }
}
