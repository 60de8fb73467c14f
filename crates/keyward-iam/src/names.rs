//! Names of identities and policies.
//!
//! A name is a path segment (`/v1/identities/{name}`), an audit principal and a policy reference, so it must
//! be reachable by path, unambiguous in a trail, and unable to pass for the service itself: `.` and `..` are
//! refused (a client or proxy resolves them away before the request is sent), reserved names are refused in
//! any case (`ROOT` would read as `root` to a person scanning a log), and two names that differ only by case
//! cannot both exist.

use keyward_core::{ErrorCode, KmsError};

/// Principals the service itself uses in its records: no identity may take one, in any case.
pub const RESERVED_IDENTITIES: [&str; 3] = ["root", "anonymous", "system"];

fn dot_segment(n: &str) -> bool {
    n == "." || n == ".."
}

/// An identity name: 1 to 64 characters of `A-Z a-z 0-9 . _ - @`, not a dot segment, not reserved.
pub fn check_identity(n: &str) -> Result<(), KmsError> {
    let chars_ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if !chars_ok || dot_segment(n) {
        return Err(KmsError::new(
            ErrorCode::ValidationError,
            "identity names are 1 to 64 characters of A-Z a-z 0-9 . _ - @ (not . or ..)",
        ));
    }
    if let Some(r) = RESERVED_IDENTITIES
        .iter()
        .find(|r| r.eq_ignore_ascii_case(n))
    {
        return Err(KmsError::new(
            ErrorCode::ValidationError,
            format!(
                "identity name {} is reserved ({r}), in any case",
                quoted_name(n)
            ),
        ));
    }
    Ok(())
}

/// Whether `n` is a well-formed identity name (see [`check_identity`]).
pub fn valid_identity(n: &str) -> bool {
    check_identity(n).is_ok()
}

/// A policy name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, not a dot segment.
pub fn check_policy(n: &str) -> Result<(), KmsError> {
    let chars_ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !chars_ok || dot_segment(n) {
        return Err(KmsError::new(
            ErrorCode::ValidationError,
            "policy names are 1 to 128 characters of A-Z a-z 0-9 . _ - (not . or ..)",
        ));
    }
    Ok(())
}

/// The stored name that `n` would collide with, if one differs from it only by case: names are unique
/// without regard to case.
pub fn clash<'a>(n: &str, existing: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    existing
        .into_iter()
        .find(|e| *e != n && e.eq_ignore_ascii_case(n))
}

fn quoted_name(n: &str) -> String {
    keyward_core::quoted(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_reserved_names_in_any_case_are_refused() {
        for bad in [
            ".",
            "..",
            "",
            "root",
            "ROOT",
            "Root",
            "anonymous",
            "SYSTEM",
            "a/b",
            "a b",
        ] {
            assert!(check_identity(bad).is_err(), "{bad}");
        }
        for bad in [".", "..", "", "a/b", "p:q"] {
            assert!(check_policy(bad).is_err(), "{bad}");
        }
        for good in ["alice", "svc.payments", "a@b", "...", ".alice", "rooted"] {
            assert!(check_identity(good).is_ok(), "{good}");
        }
        for good in ["deny-all", "p.v1", "..."] {
            assert!(check_policy(good).is_ok(), "{good}");
        }
        let e = check_identity("ROOT").unwrap_err();
        assert!(e.message().contains("reserved"), "{}", e.message());
    }

    #[test]
    fn names_are_unique_without_regard_to_case() {
        let stored = ["Alice", "bob"];
        assert_eq!(clash("alice", stored), Some("Alice"));
        assert_eq!(clash("BOB", stored), Some("bob"));
        assert_eq!(
            clash("bob", stored),
            None,
            "the same name is a replacement, not a clash"
        );
        assert_eq!(clash("carol", stored), None);
    }
}
