//! Long lists cut to fit a screen in the table output of `qm state`,
//! `qm top` and `qm provider list`: a count, the first few, and how to see
//! all. JSON output is never cut.

/// Items of a list shown in one table cell or line.
pub const LIST_SHOWN_MAX: usize = 5;
/// Provider rows shown in `qm state` and `qm top`.
pub const PROVIDER_ROWS_SHOWN_MAX: usize = 20;
/// Provider rows shown by `qm provider list` without `--all`.
pub const PROVIDER_LIST_ROWS_SHOWN_MAX: usize = 50;

/// `items` joined when there are few; else the count, the first
/// [`LIST_SHOWN_MAX`] and where to see the rest, e.g. `500: a, b, c, d, e
/// and 495 more (see all: qm --output json state)`.
pub fn list_cell(items: &[String], see_all: &str) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    if items.len() <= LIST_SHOWN_MAX {
        return items.join(", ");
    }
    format!(
        "{}: {} and {} more (see all: {see_all})",
        items.len(),
        items[..LIST_SHOWN_MAX].join(", "),
        items.len() - LIST_SHOWN_MAX
    )
}

/// The line under a table that showed `shown` of `total` rows, if it cut any.
pub fn rows_left_out(shown: usize, total: usize, what: &str, see_all: &str) -> Option<String> {
    (total > shown).then(|| format!("... and {} more {what} (see all: {see_all})", total - shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_is_counted_cut_and_says_how_to_see_all() {
        let ids = |count: usize| (0..count).map(|n| format!("p{n}")).collect::<Vec<_>>();
        assert_eq!("-", list_cell(&[], "x"));
        assert_eq!("p0, p1, p2, p3, p4", list_cell(&ids(5), "x"));
        assert_eq!("500: p0, p1, p2, p3, p4 and 495 more (see all: x)", list_cell(&ids(500), "x"));
        assert_eq!(None, rows_left_out(20, 20, "providers", "x"));
        assert_eq!(
            Some("... and 480 more providers (see all: x)".to_owned()),
            rows_left_out(20, 500, "providers", "x")
        );
    }
}
