//! RFC 3339 timestamps as milliseconds since the Unix epoch, without a clock.
//!
//! The protocol's `deadline` is a datetime string; the table works in integer
//! milliseconds stamped by the leader. Converting here, with plain integer
//! calendar arithmetic, keeps the crate free of `std::time` and of any
//! dependency that could read the wall clock.
//!
//! [`OptionalMillis`] is the record's optional times, 8 bytes each.

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type UnixMillis = u64;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` if malformed or
/// before the epoch.
pub fn parse_rfc3339(text: &str) -> Option<UnixMillis> {
    // ASCII only, so that every slice below falls on a character boundary
    // (a multi-byte character there made the slicing panic: found by
    // fuzzing, `fuzz/corpus/protocol_request`).
    if !text.is_ascii() {
        return None;
    }
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' {
        return None;
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') || bytes[16] != b':' {
        return None;
    }
    let year = digits(&text[0..4])?;
    let month = digits(&text[5..7])?;
    let day = digits(&text[8..10])?;
    let hour = digits(&text[11..13])?;
    let minute = digits(&text[14..16])?;
    let second = digits(&text[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        // Only the first three digits matter at millisecond resolution.
        let kept = &fraction[..len.min(3)];
        millis = digits(kept)? * 10i64.pow(3 - kept.len() as u32);
        rest = &fraction[len..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (digits(&rest[1..3])?, digits(&rest[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    let total = seconds.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(total).ok()
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339(millis: UnixMillis) -> String {
    let total_seconds = (millis / 1000) as i64;
    let (days, day_seconds) = (total_seconds.div_euclid(86_400), total_seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_seconds / 3600,
        (day_seconds / 60) % 60,
        day_seconds % 60,
        millis % 1000
    )
}

fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// A time in milliseconds, or none: an `Option<u64>` in 8 bytes instead of
/// 16. A record keeps four (its lease's expiry, when it finished, was first
/// granted, last moved), 32 bytes of every record a table holds
/// (BENCHMARKS.md, "Fewer bytes per record").
///
/// `u64::MAX` stands for none, so a time is at most [`Self::MAX_MS`],
/// 584 million years past the epoch: a time set past it is held there
/// (only a clock that far off could ask for it). Encodes exactly as
/// `Option<u64>` does, and decoding refuses `Some(u64::MAX)`, which no
/// table can hold, rather than read it as none.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OptionalMillis(u64);

/// The value that stands for none.
const NO_MILLIS: u64 = u64::MAX;

impl OptionalMillis {
    pub const NONE: OptionalMillis = OptionalMillis(NO_MILLIS);
    /// The latest time one can hold.
    pub const MAX_MS: UnixMillis = NO_MILLIS - 1;

    /// `ms`, held at [`Self::MAX_MS`] if past it.
    pub const fn some(ms: UnixMillis) -> OptionalMillis {
        OptionalMillis(if ms > Self::MAX_MS { Self::MAX_MS } else { ms })
    }

    pub const fn get(self) -> Option<UnixMillis> {
        if self.0 == NO_MILLIS {
            None
        } else {
            Some(self.0)
        }
    }

    pub const fn is_some(self) -> bool {
        self.0 != NO_MILLIS
    }

    pub const fn is_none(self) -> bool {
        self.0 == NO_MILLIS
    }

    /// Sets the time to `ms` if there is none yet.
    pub fn get_or_insert(&mut self, ms: UnixMillis) -> UnixMillis {
        if self.is_none() {
            *self = OptionalMillis::some(ms);
        }
        self.0
    }
}

impl Default for OptionalMillis {
    fn default() -> OptionalMillis {
        OptionalMillis::NONE
    }
}

impl From<Option<UnixMillis>> for OptionalMillis {
    fn from(ms: Option<UnixMillis>) -> OptionalMillis {
        ms.map_or(OptionalMillis::NONE, OptionalMillis::some)
    }
}

impl From<OptionalMillis> for Option<UnixMillis> {
    fn from(ms: OptionalMillis) -> Option<UnixMillis> {
        ms.get()
    }
}

impl PartialEq<Option<UnixMillis>> for OptionalMillis {
    fn eq(&self, other: &Option<UnixMillis>) -> bool {
        self.get() == *other
    }
}

/// As the `Option<u64>` it stands for.
impl std::fmt::Debug for OptionalMillis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl serde::Serialize for OptionalMillis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for OptionalMillis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OptionalMillis, D::Error> {
        match Option::<UnixMillis>::deserialize(deserializer)? {
            Some(NO_MILLIS) => Err(serde::de::Error::custom(format!(
                "a time of {NO_MILLIS} ms, past the latest a table holds ({})",
                OptionalMillis::MAX_MS
            ))),
            ms => Ok(OptionalMillis::from(ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_byte_character_anywhere_is_malformed_not_a_panic() {
        // 'Н' is two bytes: it straddles the byte offsets the parser slices at.
        for text in [
            "2024-03-21T12:00:0Н",
            "2024-03-21T12:Н0:00Z",
            "2024-03-21T12:00:00.1Н",
            "Н2024-03-21T12:00:00Z",
        ] {
            assert_eq!(None, parse_rfc3339(text), "{text}");
        }
    }

    #[test]
    fn parses_the_protocol_example_deadline() {
        assert_eq!(parse_rfc3339("2024-03-21T10:30:00Z"), Some(1_711_017_000_000));
    }

    #[test]
    fn parses_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.123456789Z"), Some(123));
    }

    #[test]
    fn refuses_malformed_dates() {
        for bad in [
            "",
            "2024-02-30T00:00:00Z",
            "2024-03-21 10:30",
            "2024-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2024-03-21T10:30:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_and_parses_back() {
        for millis in [0, 1_711_017_000_000, 951_782_400_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(millis)), Some(millis));
        }
    }

    #[test]
    fn optional_millis_encodes_and_compares_as_an_option() {
        let config = bincode::config::standard();
        for ms in [None, Some(0), Some(1), Some(1_711_017_000_000), Some(OptionalMillis::MAX_MS)] {
            let optional = OptionalMillis::from(ms);
            assert_eq!(ms, optional.get());
            assert_eq!(optional, ms);
            assert_eq!((ms.is_some(), ms.is_none()), (optional.is_some(), optional.is_none()));
            assert_eq!(format!("{ms:?}"), format!("{optional:?}"));
            let bytes = bincode::serde::encode_to_vec(optional, config).unwrap();
            assert_eq!(bincode::serde::encode_to_vec(ms, config).unwrap(), bytes);
            assert_eq!(serde_json::to_string(&ms).unwrap(), serde_json::to_string(&optional).unwrap());
            let (decoded, _): (OptionalMillis, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(optional, decoded);
        }
        assert_eq!(OptionalMillis::NONE, OptionalMillis::default());
        let mut first = OptionalMillis::NONE;
        assert_eq!(5, first.get_or_insert(5));
        assert_eq!(5, first.get_or_insert(6), "set once");
    }

    #[test]
    fn the_value_that_stands_for_none_is_held_back_and_refused_when_decoded() {
        assert_eq!(Some(OptionalMillis::MAX_MS), OptionalMillis::some(u64::MAX).get());
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(Some(u64::MAX), config).unwrap();
        assert!(bincode::serde::decode_from_slice::<OptionalMillis, _>(&bytes, config).is_err());
        assert!(serde_json::from_str::<OptionalMillis>(&u64::MAX.to_string()).is_err());
    }
}
