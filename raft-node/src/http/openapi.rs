//! `GET /v1/openapi.json`: the OpenAPI 3 document of every route
//! ([`super::routes`]), kept in `openapi.json` beside this file. The test
//! below holds the document and the route table to each other; an
//! integration test (`tests/http_openapi.rs`) calls every documented path
//! on a real replica.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    #[test]
    fn the_document_names_exactly_the_routes_the_server_has() {
        let document: Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
        assert_eq!("3.0.3", document["openapi"]);
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .expect("methods")
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = crate::http::routes()
            .into_iter()
            .map(|route| (route.method.to_string(), route.path.to_owned()))
            .collect();
        assert_eq!(served, documented);
    }

    #[test]
    fn every_reference_resolves() {
        let document: Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
        let mut references = Vec::new();
        collect_references(&document, &mut references);
        assert!(!references.is_empty());
        for reference in references {
            let pointer = reference.trim_start_matches('#');
            assert!(document.pointer(pointer).is_some(), "{reference} does not resolve");
        }
    }

    fn collect_references(value: &Value, into: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    into.push(reference.clone());
                }
                map.values().for_each(|value| collect_references(value, into));
            }
            Value::Array(items) => items.iter().for_each(|value| collect_references(value, into)),
            _ => {}
        }
    }
}
