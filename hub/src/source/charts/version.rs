//! Chart versions and version ranges as Helm reads them (the Masterminds semver rules), and the choice of a
//! version from a repository's list. Pure: no IO.
//!
//! The `semver` crate parses and orders versions, but its ranges are Cargo's, which differ from Helm's
//! where it matters to an operator: a bare `1.2.3` is exact (Cargo: `^1.2.3`), `>1.2` accepts `1.3.0` and
//! not `1.2.5` only because the patch is a wildcard, `||` and space-separated constraints exist, and a
//! prerelease is accepted by a comparator that names any prerelease (Cargo: only one of the same
//! `major.minor.patch`). So the comparators are matched here, after Masterminds semver v3.

use std::cmp::Ordering;

use semver::{Prerelease, Version};

/// A version or range that does not parse; the message says what is wrong, in a sentence fragment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RangeError(String);

/// Which part of a comparator's version is a wildcard (`x`, `X`, `*` or left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wild {
    /// `1.2.3`: no wildcard.
    None,
    /// `*`, `x`: every number.
    Major,
    /// `1`, `1.x`: minor and patch.
    Minor,
    /// `1.2`, `1.2.x`: patch.
    Patch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Tilde,
    Caret,
}

/// One comparator such as `>=1.2.0` or `~1.2`; a wildcard's parts are 0 in `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Comparator {
    op: Op,
    version: Version,
    wild: Wild,
}

/// An exact chart version or a range (`6.x`, `^1.2`, `>=1.0.0 <2.0.0`, `~1.2`, `1.2 || 2.x`, `1.0 - 1.4`),
/// matched as Helm matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange {
    /// Alternatives (`||`), each a conjunction of comparators.
    any_of: Vec<Vec<Comparator>>,
}

/// Orders by `major.minor.patch` and prerelease; build metadata does not count (SemVer precedence).
fn precedence(a: &Version, b: &Version) -> Ordering {
    a.cmp_precedence(b)
}

/// Parses a version as Helm does for index entries: a leading `v` and a left-out minor or patch (`1.2`) are
/// tolerated; `None` when it is not a version at all.
pub fn parse_version(text: &str) -> Option<Version> {
    let text = text.trim();
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    if let Ok(version) = Version::parse(text) {
        return Some(version);
    }
    let core_end = text.find(['-', '+']).unwrap_or(text.len());
    let (core, rest) = text.split_at(core_end);
    let parts = core.split('.').count();
    if core.is_empty() || parts >= 3 {
        return None;
    }
    Version::parse(&format!("{core}{}{rest}", ".0".repeat(3 - parts))).ok()
}

impl Comparator {
    fn parse(op: &str, text: &str) -> Result<Comparator, RangeError> {
        let err = |what: &str| RangeError(format!("{op}{text:?} {what}"));
        let op = match op {
            "" | "=" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            ">=" | "=>" => Op::Ge,
            "<" => Op::Lt,
            "<=" | "=<" => Op::Le,
            "~" | "~>" => Op::Tilde,
            "^" => Op::Caret,
            other => return Err(RangeError(format!("{other:?} is not a version operator"))),
        };
        let body = text.strip_prefix(['v', 'V']).unwrap_or(text);
        // Build metadata never takes part in a comparison.
        let body = body.split_once('+').map_or(body, |(b, _)| b);
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) => (core, pre),
            None => (body, ""),
        };
        let pre = Prerelease::new(pre).map_err(|e| err(&format!("has a bad prerelease: {e}")))?;
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 {
            return Err(err("has more than three numbers"));
        }
        let mut numbers = [0u64; 3];
        let mut wild = Wild::None;
        for (i, part) in parts.iter().enumerate() {
            if matches!(*part, "x" | "X" | "*") {
                wild = [Wild::Major, Wild::Minor, Wild::Patch][i];
                break;
            }
            numbers[i] = part
                .parse()
                .map_err(|_| err("is not a version (numbers, or x for any)"))?;
        }
        if wild == Wild::None && parts.len() < 3 {
            wild = [Wild::Major, Wild::Minor, Wild::Patch][parts.len()];
        }
        let mut version = Version::new(numbers[0], numbers[1], numbers[2]);
        version.pre = pre;
        Ok(Comparator { op, version, wild })
    }

    fn matches(&self, v: &Version) -> bool {
        let c = &self.version;
        // A prerelease is considered only by a comparator that names a prerelease itself.
        if !v.pre.is_empty() && c.pre.is_empty() {
            return false;
        }
        let ord = precedence(v, c);
        match self.op {
            Op::Eq if self.wild == Wild::None => ord == Ordering::Equal,
            Op::Eq => self.tilde(v, ord),
            Op::Ne => match self.wild {
                Wild::None => ord != Ordering::Equal,
                Wild::Major => false,
                Wild::Minor => v.major != c.major,
                Wild::Patch => (v.major, v.minor, &v.pre) != (c.major, c.minor, &c.pre),
            },
            Op::Gt => match self.wild {
                Wild::None | Wild::Major => ord == Ordering::Greater,
                Wild::Minor => v.major > c.major,
                Wild::Patch => (v.major, v.minor) > (c.major, c.minor),
            },
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => match self.wild {
                Wild::None => ord != Ordering::Greater,
                Wild::Major => true,
                Wild::Minor => v.major <= c.major,
                Wild::Patch => (v.major, v.minor) <= (c.major, c.minor),
            },
            Op::Tilde => self.tilde(v, ord),
            Op::Caret => self.caret(v, ord),
        }
    }

    /// `~1.2.3` is `>=1.2.3 <1.3.0`, `~1` is `>=1.0.0 <2.0.0`, `~0.0.0` and `~*` are anything.
    fn tilde(&self, v: &Version, ord: Ordering) -> bool {
        let c = &self.version;
        if ord == Ordering::Less {
            return false;
        }
        if self.wild == Wild::Major
            || (self.wild == Wild::None && (c.major, c.minor, c.patch) == (0, 0, 0))
        {
            return true;
        }
        v.major == c.major && (self.wild == Wild::Minor || v.minor == c.minor)
    }

    /// `^1.2.3` is `>=1.2.3 <2.0.0`, `^0.2.3` is `>=0.2.3 <0.3.0`, `^0.0.3` is `=0.0.3`, `^0.0` is `<0.1.0`.
    fn caret(&self, v: &Version, ord: Ordering) -> bool {
        let c = &self.version;
        if ord == Ordering::Less {
            return false;
        }
        if self.wild == Wild::Major {
            return true;
        }
        if c.major > 0 || self.wild == Wild::Minor {
            return v.major == c.major;
        }
        if v.major > 0 {
            return false;
        }
        if c.minor > 0 || self.wild == Wild::Patch {
            return v.minor == c.minor;
        }
        v.minor == 0 && v.patch == c.patch
    }
}

const OPERATOR_CHARS: &[char] = &['=', '!', '<', '>', '~', '^'];

/// Splits one alternative into comparators: separated by spaces or commas, an operator may stand apart
/// from its version (`>= 1.0`), and `A - B` is `>=A <=B`.
fn parse_conjunction(text: &str) -> Result<Vec<Comparator>, RangeError> {
    let tokens: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .collect();
    let mut out: Vec<Comparator> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        i += 1;
        if token == "-" {
            // A hyphen range: the comparator before it and the version after it are the bounds.
            let upper = tokens.get(i).copied();
            let lower = out.last_mut().filter(|c| c.op == Op::Eq);
            let (Some(lower), Some(upper)) = (lower, upper) else {
                return Err(RangeError(format!(
                    "{text:?}: a hyphen range is written \"1.0.0 - 2.0.0\""
                )));
            };
            i += 1;
            lower.op = Op::Ge;
            out.push(Comparator::parse("<=", upper)?);
            continue;
        }
        let op_end = token
            .find(|c| !OPERATOR_CHARS.contains(&c))
            .unwrap_or(token.len());
        let (op, version) = token.split_at(op_end);
        let version = if version.is_empty() {
            let next = tokens.get(i).copied().ok_or_else(|| {
                RangeError(format!(
                    "{text:?}: operator {op:?} is followed by no version"
                ))
            })?;
            i += 1;
            next
        } else {
            version
        };
        out.push(Comparator::parse(op, version)?);
    }
    if out.is_empty() {
        return Err(RangeError(format!(
            "{text:?}: an alternative of \"||\" is empty"
        )));
    }
    Ok(out)
}

impl VersionRange {
    /// Parses an exact version or a range; an empty text is `*`, the newest release.
    pub fn parse(text: &str) -> Result<VersionRange, RangeError> {
        let text = text.trim();
        if text.is_empty() {
            return VersionRange::parse("*");
        }
        let any_of = text
            .split("||")
            .map(parse_conjunction)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VersionRange { any_of })
    }

    /// Whether `version` satisfies every comparator of one alternative.
    pub fn matches(&self, version: &Version) -> bool {
        self.any_of
            .iter()
            .any(|all| all.iter().all(|c| c.matches(version)))
    }
}

/// Chooses among `(version string, item)` candidates as Helm does: the first whose version string is exactly
/// `requested`, otherwise the newest that `range` matches (the first listed among equals). Candidates whose
/// version does not parse are only eligible by the exact string.
pub fn select<'a, T>(
    candidates: impl IntoIterator<Item = (&'a str, T)>,
    requested: &str,
    range: &VersionRange,
) -> Option<T> {
    let mut best: Option<(Version, T)> = None;
    for (text, item) in candidates {
        if !requested.is_empty() && text == requested {
            return Some(item);
        }
        let Some(version) = parse_version(text).filter(|v| range.matches(v)) else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|(b, _)| precedence(&version, b) == Ordering::Greater)
        {
            best = Some((version, item));
        }
    }
    best.map(|(_, item)| item)
}

/// Version strings newest first (those that do not parse last, as listed), for messages.
pub fn newest_first<'a>(versions: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut parsed: Vec<(Option<Version>, &str)> = versions
        .into_iter()
        .map(|v| (parse_version(v), v))
        .collect();
    parsed.sort_by(|(a, _), (b, _)| match (a, b) {
        (Some(a), Some(b)) => precedence(b, a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    parsed.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        parse_version(text).unwrap_or_else(|| panic!("{text} is not a version"))
    }

    #[test]
    fn ranges_match_as_helm_matches_them() {
        // (range, version, matches): cases from Helm's and Masterminds semver's documented behaviour.
        let cases: &[(&str, &str, bool)] = &[
            // Exact.
            ("1.2.3", "1.2.3", true),
            ("1.2.3", "1.2.4", false),
            ("=1.2.3", "1.2.3", true),
            ("v1.2.3", "1.2.3", true),
            ("1.2.3", "1.2.3+build.5", true),
            ("!=1.2.3", "1.2.4", true),
            ("!=1.2.3", "1.2.3", false),
            ("!=1.2.x", "1.2.9", false),
            ("!=1.2.x", "1.3.0", true),
            // Wildcards and left-out parts.
            ("6.x", "6.5.0", true),
            ("6.x", "7.0.0", false),
            ("6.X", "6.0.1", true),
            ("6.*", "6.9.9", true),
            ("6", "6.2.0", true),
            ("1.2", "1.2.7", true),
            ("1.2", "1.3.0", false),
            ("1.2.x", "1.2.0", true),
            ("*", "0.0.1", true),
            ("x", "99.0.0", true),
            ("", "3.1.4", true),
            // Comparisons.
            (">1.2.3", "1.2.4", true),
            (">1.2.3", "1.2.3", false),
            (">1.2", "1.2.9", false),
            (">1.2", "1.3.0", true),
            (">1", "1.9.0", false),
            (">1", "2.0.0", true),
            (">=1.0.0", "1.0.0", true),
            ("=>1.0.0", "1.0.0", true),
            (">= 1.0.0", "0.9.0", false),
            ("<2.0.0", "1.99.99", true),
            ("<2.0.0", "2.0.0", false),
            ("<2", "1.9.0", true),
            ("<=1.2", "1.2.9", true),
            ("<=1.2", "1.3.0", false),
            ("=<1.2.3", "1.2.3", true),
            ("<=1.2.3", "1.2.4", false),
            // Conjunctions, space- or comma-separated, and hyphen ranges.
            (">=1.0.0 <2.0.0", "1.5.0", true),
            (">=1.0.0 <2.0.0", "2.0.0", false),
            (">=1.0.0, <2.0.0", "1.0.0", true),
            (">= 1.0.0 , < 2.0.0", "0.9.9", false),
            ("1.0 - 1.4", "1.4.9", true),
            ("1.0 - 1.4", "1.5.0", false),
            ("1.0.0 - 1.4.5", "1.4.6", false),
            // Tilde.
            ("~1.2.3", "1.2.9", true),
            ("~1.2.3", "1.3.0", false),
            ("~1.2.3", "1.2.2", false),
            ("~1.2", "1.2.0", true),
            ("~1", "1.9.0", true),
            ("~1", "2.0.0", false),
            ("~>1.2", "1.2.5", true),
            ("~1.x", "1.7.0", true),
            // Caret.
            ("^1.2", "1.9.0", true),
            ("^1.2", "1.1.0", false),
            ("^1.2", "2.0.0", false),
            ("^1.2.3", "1.2.3", true),
            ("^0.2.3", "0.2.9", true),
            ("^0.2.3", "0.3.0", false),
            ("^0.0.3", "0.0.3", true),
            ("^0.0.3", "0.0.4", false),
            ("^0.0", "0.0.9", true),
            ("^0.0", "0.1.0", false),
            ("^0", "0.9.0", true),
            ("^0", "1.0.0", false),
            // Alternatives.
            ("1.2 || 2.x", "1.2.5", true),
            ("1.2 || 2.x", "2.3.0", true),
            ("1.2 || 2.x", "1.3.0", false),
            ("<1.0.0 || >=3.0.0", "3.1.0", true),
            // Prereleases only where a comparator names one.
            ("6.x", "6.5.0-rc.1", false),
            (">=1.0.0", "1.2.0-beta.1", false),
            ("*", "1.0.0-alpha", false),
            ("1.2.3-beta.1", "1.2.3-beta.1", true),
            (">=1.0.0-0", "1.2.0-beta.1", true),
            (">=1.0.0-0", "0.9.0-beta.1", false),
            (">=1.0.0-0 <2.0.0-0", "1.9.0-rc.1", true),
            (">=1.0.0-0 <2.0.0", "1.9.0-rc.1", false),
            (">=1.2.3-alpha", "1.2.3", true),
            ("<1.2.3", "1.2.3-beta", false),
            ("<1.2.3-0", "1.2.3-beta", false),
            ("<1.2.3-z", "1.2.3-beta", true),
            ("^1.2.3-beta.2", "1.2.3-beta.10", true),
            ("^1.2.3-beta.2", "1.2.3-beta.1", false),
        ];
        for (range, version, want) in cases {
            let parsed = VersionRange::parse(range).unwrap_or_else(|e| panic!("{range:?}: {e}"));
            assert_eq!(
                parsed.matches(&v(version)),
                *want,
                "{range:?} against {version}"
            );
        }
    }

    #[test]
    fn bad_ranges_are_refused_with_a_reason() {
        let cases = [
            ("1.2.3.4", "more than three numbers"),
            ("abc", "is not a version"),
            ("<>1.0", "is not a version operator"),
            (">=", "followed by no version"),
            ("1.0 ||", "is empty"),
            ("|| 1.0", "is empty"),
            ("- 1.0", "hyphen range"),
            ("1.0 -", "hyphen range"),
            ("1.0.0-be$ta", "bad prerelease"),
            ("1.-1", "is not a version"),
        ];
        for (range, want) in cases {
            let err = VersionRange::parse(range).unwrap_err().to_string();
            assert!(err.contains(want), "{range:?}: {err}");
        }
    }

    #[test]
    fn selection_prefers_the_exact_string_then_the_newest_match() {
        let index = [
            "1.2.0",
            "2.0.0-rc.1",
            "1.10.0",
            "1.9.3",
            "not-a-version",
            "v1.3.0",
            "1.2",
        ];
        let pick = |requested: &str| {
            let range = VersionRange::parse(requested)
                .unwrap_or_else(|_| VersionRange::parse("=0.0.0-never").unwrap());
            select(index.iter().map(|v| (*v, *v)), requested, &range)
        };
        let cases = [
            ("1.x", Some("1.10.0")),
            ("~1.9", Some("1.9.3")),
            ("1.9.3", Some("1.9.3")),
            ("1.3.0", Some("v1.3.0")),
            ("1.2", Some("1.2")), // the exact string wins over 1.2.0, as in Helm
            ("1.2.0", Some("1.2.0")),
            ("", Some("1.10.0")),
            (">=2.0.0-0", Some("2.0.0-rc.1")),
            ("not-a-version", Some("not-a-version")),
            ("3.x", None),
        ];
        for (requested, want) in cases {
            assert_eq!(pick(requested), want, "{requested:?}");
        }
        // Equal versions: the first listed.
        let twins = [("1.0.0+a", 1), ("1.0.0+b", 2)];
        assert_eq!(
            select(twins, "1.x", &VersionRange::parse("1.x").unwrap()),
            Some(1)
        );
    }

    #[test]
    fn versions_parse_leniently_like_index_entries() {
        let cases = [
            ("1.2.3", Some("1.2.3")),
            ("v1.2.3", Some("1.2.3")),
            ("1.2", Some("1.2.0")),
            ("2", Some("2.0.0")),
            ("1.2-rc.1", Some("1.2.0-rc.1")),
            ("1.2.3+meta", Some("1.2.3+meta")),
            ("", None),
            ("latest", None),
            ("1.2.3.4", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_version(text).map(|v| v.to_string()).as_deref(),
                want,
                "{text:?}"
            );
        }
        assert_eq!(
            newest_first(["1.0.0", "junk", "1.10.0", "1.2.0-rc.1", "1.2.0"]),
            ["1.10.0", "1.2.0", "1.2.0-rc.1", "1.0.0", "junk"]
        );
    }
}
