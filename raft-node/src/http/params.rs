//! Query strings, durations and request bodies, each refused with a `400`
//! naming the parameter (or a `413`) before anything else happens.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::HeaderMap;

use qm_state_machine::error::quoted;
use qm_state_machine::protocol::PARSE_ERROR_LEN_MAX;
use serde::de::DeserializeOwned;

use super::error::HttpError;

/// The longest `?wait=` a call may ask for (Consul's own bound).
pub const WAIT_MAX_MS: u64 = 600_000;

/// A query string's pairs, in order (a name may repeat: `tag=a&tag=b`).
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        let pairs = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        Params(pairs)
    }

    /// The first value of `name`; `Some("")` for a bare `?name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// A value that must not be empty when given.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|value| !value.is_empty())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Whether the flag is present (`?stale`, `?stale=`, `?stale=1`), and not `false`.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|value| value != "false" && value != "0")
    }

    /// A whole number, if given.
    pub fn number(&self, name: &str) -> Result<Option<u64>, HttpError> {
        self.non_empty(name)
            .map(|text| {
                text.parse()
                    .map_err(|_| HttpError::invalid(name, format!("{} is not a whole number", quoted(text))))
            })
            .transpose()
    }

    /// A duration (`30s`, `500ms`, `2m`, or seconds alone), at most [`WAIT_MAX_MS`].
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, HttpError> {
        self.non_empty(name).map(|text| parse_duration(name, text)).transpose()
    }
}

/// `30s`, `500ms`, `2m`, `1h` or a number of seconds, capped at [`WAIT_MAX_MS`].
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, HttpError> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let invalid = || HttpError::invalid(field, format!("{} is not a duration like 30s, 500ms or 2m", quoted(text)));
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let per_unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    Ok(Duration::from_millis(amount.saturating_mul(per_unit_ms).min(WAIT_MAX_MS)))
}

/// Reads a body of at most `limit_bytes`: a larger declared `Content-Length`
/// is refused before a byte is read, and a body without one is cut off at
/// the limit instead of being read whole.
pub async fn read_body(headers: &HeaderMap, body: Body, limit_bytes: usize) -> Result<Bytes, HttpError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit_bytes as u64) {
        return Err(HttpError::too_large(limit_bytes));
    }
    axum::body::to_bytes(body, limit_bytes)
        .await
        .map_err(|_| HttpError::too_large(limit_bytes))
}

/// The body as JSON text.
pub fn utf8<'a>(field: &str, body: &'a [u8]) -> Result<&'a str, HttpError> {
    std::str::from_utf8(body).map_err(|_| HttpError::invalid(field, "the body is not UTF-8 text"))
}

/// The body as the JSON document `T`; anything else is a `400` naming
/// `field` with serde's reason, cut to a bounded length.
pub fn json_document<T: DeserializeOwned>(field: &str, body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_str(utf8(field, body)?).map_err(|error| HttpError::invalid(field, bounded(error.to_string())))
}

/// A parser's message cut to [`PARSE_ERROR_LEN_MAX`] bytes: serde quotes
/// the input it stopped at, which may be long.
pub fn bounded(mut message: String) -> String {
    if message.len() > PARSE_ERROR_LEN_MAX {
        let mut cut = PARSE_ERROR_LEN_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_consul_units_and_are_capped() {
        assert_eq!(Duration::from_secs(30), parse_duration("wait", "30s").unwrap());
        assert_eq!(Duration::from_millis(500), parse_duration("wait", "500ms").unwrap());
        assert_eq!(Duration::from_secs(120), parse_duration("wait", "2m").unwrap());
        assert_eq!(Duration::from_secs(7), parse_duration("wait", "7").unwrap());
        assert_eq!(Duration::from_millis(WAIT_MAX_MS), parse_duration("wait", "5h").unwrap());
        for bad in ["", "s", "3x", "-1s", "1.5s"] {
            let error = parse_duration("wait", bad).unwrap_err();
            assert_eq!("wait", error.body["field"], "{bad}");
        }
    }

    #[test]
    fn repeated_and_bare_parameters() {
        let params = Params::parse(Some("tag=a&tag=b%20c&stale&passing=false&index=12"));
        assert_eq!(vec!["a", "b c"], params.all("tag").collect::<Vec<_>>());
        assert!(params.flag("stale"));
        assert!(!params.flag("passing"));
        assert_eq!(Some(12), params.number("index").unwrap());
        assert_eq!("index", Params::parse(Some("index=x")).number("index").unwrap_err().body["field"]);
    }
}
