//! RFC 3339 timestamps as milliseconds since the Unix epoch, without a clock.
//!
//! The protocol's `deadline` is a datetime string; the table works in integer
//! milliseconds stamped by the leader. Converting here, with plain integer
//! calendar arithmetic, keeps the crate free of `std::time` and of any
//! dependency that could read the wall clock.

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
}
