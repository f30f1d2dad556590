//! Stream names, categories, and which versions of a stream a reader sees under its
//! metadata (truncate-before, max count, max age) and deletion. Pure: no I/O.

/// Longest stream name, in bytes.
pub const STREAM_LEN_MAX: usize = 200;

/// Why a stream name is refused.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a stream name cannot be empty".into());
    }
    if name.len() > STREAM_LEN_MAX {
        return Err(format!(
            "stream name is {} bytes, longer than {STREAM_LEN_MAX}",
            name.len()
        ));
    }
    if name.starts_with('$') {
        return Err(format!(
            "{name:?}: names starting with '$' are reserved ($all)"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; a stream name is letters, digits and - _ . : @"
        ));
    }
    Ok(())
}

/// The category of a stream: its name before the first `-` (`order-42` → `order`).
/// A stream without a `-` belongs to no category.
pub fn category(stream: &str) -> Option<&str> {
    match stream.split_once('-') {
        Some((c, _)) if !c.is_empty() => Some(c),
        _ => None,
    }
}

/// Why `category` is not one: a category is a non-empty stream-name prefix without `-`.
pub fn validate_category(category: &str) -> Result<(), String> {
    if category.is_empty()
        || category.contains('-')
        || validate_name(&format!("{category}-x")).is_err()
    {
        return Err(format!(
            "{category:?} is not a category: the part of a stream name before its first '-'"
        ));
    }
    Ok(())
}

/// What limits which of a stream's events are visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Visibility {
    /// The last version ever appended.
    pub last: Option<u64>,
    /// Versions below this were deleted (soft or hard delete).
    pub deleted_before: u64,
    /// The metadata's truncate-before.
    pub truncate_before: Option<u64>,
    /// The metadata's max count: only the latest this many versions are visible.
    pub max_count: Option<u64>,
}

impl Visibility {
    /// The first visible version (everything from here to `last` is visible, apart from
    /// events past the max age). Equals `last + 1` (or 0) when nothing is visible.
    pub fn first_visible(&self) -> u64 {
        let Some(last) = self.last else {
            return 0;
        };
        let mut first = self.deleted_before.max(self.truncate_before.unwrap_or(0));
        if let Some(n) = self.max_count {
            first = first.max((last + 1).saturating_sub(n));
        }
        first.min(last + 1)
    }

    /// Whether version `v` is visible (ignoring max age).
    pub fn is_visible(&self, v: u64) -> bool {
        self.last.is_some_and(|last| v <= last) && v >= self.first_visible()
    }
}

/// Whether an event recorded at `recorded_ms` is past a max age of `max_age_ms` at `now`.
pub fn is_expired(recorded_ms: u64, max_age_ms: Option<u64>, now: u64) -> bool {
    max_age_ms.is_some_and(|age| recorded_ms.saturating_add(age) <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "order-42",
            "a",
            "Order_1.2:x@y",
            &"a".repeat(STREAM_LEN_MAX),
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "$all",
            "a b",
            "a/b",
            "ü",
            &"a".repeat(STREAM_LEN_MAX + 1),
            "a\0",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn category_names() {
        for ok in ["order", "Order_1.2"] {
            assert_eq!(validate_category(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a-b", "$all", "a b"] {
            assert!(validate_category(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn categories() {
        let cases = [
            ("order-42", Some("order")),
            ("order-42-x", Some("order")),
            ("order", None),
            ("-42", None),
            ("a-", Some("a")),
        ];
        for (stream, want) in cases {
            assert_eq!(category(stream), want, "{stream}");
        }
    }

    #[test]
    fn first_visible_versions() {
        let v = |last, deleted_before, truncate_before, max_count| Visibility {
            last,
            deleted_before,
            truncate_before,
            max_count,
        };
        // (visibility, first visible)
        let cases = [
            (v(None, 0, None, None), 0),
            (v(Some(9), 0, None, None), 0),
            (v(Some(9), 0, Some(4), None), 4),
            (v(Some(9), 0, None, Some(3)), 7),
            (v(Some(9), 0, Some(8), Some(3)), 8),
            (v(Some(9), 0, Some(2), Some(30)), 2),
            // Soft-deleted at 9: nothing visible; appends continue at 10.
            (v(Some(9), 10, None, None), 10),
            (v(Some(12), 10, None, None), 10),
            // Truncate-before past the end shows nothing.
            (v(Some(9), 0, Some(100), None), 10),
            (v(Some(9), 0, None, Some(0)), 10),
        ];
        for (vis, want) in cases {
            assert_eq!(vis.first_visible(), want, "{vis:?}");
        }
        let vis = v(Some(9), 0, Some(4), None);
        assert!(!vis.is_visible(3));
        assert!(vis.is_visible(4));
        assert!(vis.is_visible(9));
        assert!(!vis.is_visible(10));
    }

    #[test]
    fn max_age() {
        assert!(!is_expired(1_000, None, 10_000_000));
        assert!(!is_expired(1_000, Some(500), 1_499));
        assert!(is_expired(1_000, Some(500), 1_500));
    }
}
