//! The CloudEvents 1.0 HTTP binding: events arrive as
//!
//! - **binary mode**: attributes in `ce-*` headers, the body is the data,
//!   `Content-Type` is `datacontenttype`;
//! - **structured mode**: `Content-Type: application/cloudevents+json`, the
//!   whole event as a JSON object (`data` as JSON, or `data_base64`);
//! - **batch mode**: `Content-Type: application/cloudevents-batch+json`, a
//!   JSON array of structured events.
//!
//! `id`, `source`, `type` and `specversion` (`1.0`) are required; an error
//! names the missing or malformed attribute.

use crate::values::event::{Attributes, Event};
use crate::values::topic::Topic;
use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why a request does not hold valid CloudEvents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A required attribute is absent.
    #[error("missing CloudEvents attribute `{0}`")]
    Missing(String),
    /// An attribute has a value it may not have.
    #[error("invalid CloudEvents attribute `{name}`: {reason}")]
    Invalid {
        /// The attribute.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The body is not the JSON the content type says.
    #[error("invalid CloudEvents JSON: {0}")]
    Json(String),
}

fn invalid(name: &str, reason: impl Into<String>) -> ParseError {
    ParseError::Invalid {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Reads the events of a request published on `topic`.
pub fn from_request(
    topic: &Topic,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Vec<Event>, ParseError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/cloudevents-batch+json") {
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| ParseError::Json(e.to_string()))?;
        let Value::Array(items) = value else {
            return Err(ParseError::Json("a batch must be a JSON array".into()));
        };
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(map) => structured(topic, map),
                _ => Err(ParseError::Json(format!(
                    "batch item {i} is not a JSON object"
                ))),
            })
            .collect();
    }
    if content_type.starts_with("application/cloudevents+json") {
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| ParseError::Json(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(ParseError::Json(
                "a structured event must be a JSON object".into(),
            ));
        };
        return Ok(vec![structured(topic, map)?]);
    }
    Ok(vec![binary(topic, headers, body)?])
}

fn binary(topic: &Topic, headers: &HeaderMap, body: Bytes) -> Result<Event, ParseError> {
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(attr) = name.as_str().strip_prefix("ce-") {
            let value = value
                .to_str()
                .map_err(|_| invalid(attr, "not valid text"))?;
            attrs.insert(attr.to_owned(), percent_decode(value));
        }
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    build(
        topic,
        attrs,
        content_type,
        (!body.is_empty()).then_some(body),
    )
}

fn structured(topic: &Topic, mut map: Map<String, Value>) -> Result<Event, ParseError> {
    // Only `data` that is JSON other than a string is kept as JSON text;
    // without a `datacontenttype`, that is what it is (CloudEvents' JSON
    // format). A string is kept as its text, `data_base64` as its bytes.
    let is_json = matches!(map.get("data"), Some(v) if !v.is_string() && !v.is_null());
    let data = match (map.remove("data"), map.remove("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "data_base64",
                "`data` and `data_base64` are exclusive",
            ));
        }
        (None, Some(Value::String(b64))) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| invalid("data_base64", e.to_string()))?,
        )),
        (None, Some(_)) => return Err(invalid("data_base64", "must be a string")),
        (Some(Value::String(s)), None) => Some(Bytes::from(s)),
        (Some(Value::Null), None) | (None, None) => None,
        (Some(other), None) => Some(Bytes::from(other.to_string())),
    };
    let mut attrs = BTreeMap::new();
    for (name, value) in map {
        let text = match value {
            Value::String(s) => s,
            Value::Null => continue,
            Value::Bool(_) | Value::Number(_) => value.to_string(),
            _ => {
                return Err(invalid(
                    &name,
                    "an attribute must be a string, number or boolean",
                ));
            }
        };
        attrs.insert(name, text);
    }
    let content_type = attrs.remove("datacontenttype");
    let json_data = is_json && content_type.is_none();
    let mut event = build(topic, attrs, content_type, data)?;
    if json_data {
        event.attributes.datacontenttype = Some("application/json".into());
    }
    Ok(event)
}

/// Checks the attributes and assembles the event.
fn build(
    topic: &Topic,
    mut attrs: BTreeMap<String, String>,
    datacontenttype: Option<String>,
    data: Option<Bytes>,
) -> Result<Event, ParseError> {
    let mut required = |name: &str| -> Result<String, ParseError> {
        let value = attrs
            .remove(name)
            .ok_or_else(|| ParseError::Missing(name.to_owned()))?;
        if value.is_empty() {
            return Err(invalid(name, "must not be empty"));
        }
        Ok(value)
    };
    let specversion = required("specversion")?;
    if specversion != "1.0" {
        return Err(invalid(
            "specversion",
            format!("{specversion:?} is not supported (only 1.0)"),
        ));
    }
    let id = required("id")?;
    let source = required("source")?;
    let ty = required("type")?;
    let subject = attrs.remove("subject");
    let time = attrs.remove("time");
    if let Some(time) = &time
        && !looks_like_rfc3339(time)
    {
        return Err(invalid(
            "time",
            format!("{time:?} is not an RFC 3339 timestamp"),
        ));
    }
    for name in attrs.keys() {
        // Not attributes: the event's data, and its type (in binary mode
        // the body and `Content-Type`). Taken as extensions they would
        // overwrite them once the event is handed on as structured JSON
        // (found by fuzzing: a `ce-data` header replaced the data).
        if matches!(name.as_str(), "data" | "data_base64" | "datacontenttype") {
            return Err(invalid(
                name,
                "is not an extension: the data is the body, its type the Content-Type header",
            ));
        }
        if name.is_empty()
            || name.len() > 20
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(invalid(
                name,
                "extension names are 1 to 20 lowercase letters and digits",
            ));
        }
    }
    Ok(Event {
        topic: topic.clone(),
        attributes: Attributes {
            id,
            source,
            ty,
            subject,
            time,
            datacontenttype,
            extensions: attrs,
        },
        data,
    })
}

/// `2026-11-23T21:08:00Z`, `2026-11-23T21:08:00.123+01:00`, ...
fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains(['+', '-']))
}

/// Header values of the binary mode are percent-encoded where needed.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The structured-mode JSON of an event: data as JSON when its type is
/// JSON, as a string when its type is text (or unset) and it is UTF-8, as
/// `data_base64` otherwise.
pub fn to_json(event: &Event) -> Value {
    let a = &event.attributes;
    let mut map = Map::new();
    map.insert("specversion".into(), "1.0".into());
    map.insert("id".into(), a.id.clone().into());
    map.insert("source".into(), a.source.clone().into());
    map.insert("type".into(), a.ty.clone().into());
    for (name, value) in [
        ("subject", &a.subject),
        ("time", &a.time),
        ("datacontenttype", &a.datacontenttype),
    ] {
        if let Some(v) = value {
            map.insert(name.into(), v.clone().into());
        }
    }
    for (k, v) in &a.extensions {
        map.insert(k.clone(), v.clone().into());
    }
    if let Some(data) = &event.data {
        let media = a.datacontenttype.as_deref().unwrap_or("");
        // JSON `null` would read back as no data at all: kept as text.
        let json = (media.is_empty() || media.contains("json"))
            .then(|| serde_json::from_slice::<Value>(data).ok())
            .flatten()
            .filter(|v| !v.is_null());
        let textual = media.is_empty()
            || media.starts_with("text/")
            || media.contains("json")
            || media.contains("xml");
        match (json, std::str::from_utf8(data)) {
            (Some(v), _) => {
                map.insert("data".into(), v);
            }
            (None, Ok(text)) if textual => {
                map.insert("data".into(), text.into());
            }
            (None, _) => {
                map.insert(
                    "data_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(data)
                        .into(),
                );
            }
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_and_its_type_are_not_extensions() {
        let topic = Topic::parse("orders.created").unwrap();
        for name in ["data", "datacontenttype"] {
            let mut headers = HeaderMap::new();
            for (h, v) in [
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
            ] {
                headers.insert(h, v.parse().unwrap());
            }
            headers.insert(
                http::HeaderName::from_bytes(format!("ce-{name}").as_bytes()).unwrap(),
                "\"x\"".parse().unwrap(),
            );
            let err = from_request(&topic, &headers, Bytes::from_static(b"body")).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            assert!(err.to_string().contains("not an extension"), "{err}");
        }
    }

    use super::*;
    use http::HeaderValue;

    fn topic() -> Topic {
        Topic::parse("users.signed-up").unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn binary_mode() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/signup"),
            ("ce-type", "user.signed-up"),
            ("ce-subject", "ada%40example.com"),
            ("ce-traceid", "abc"),
            ("content-type", "application/json"),
        ]);
        let events = from_request(&topic(), &h, Bytes::from("{\"a\":1}")).unwrap();
        let e = &events[0];
        assert_eq!(e.attributes.id, "42");
        assert_eq!(e.attributes.subject.as_deref(), Some("ada@example.com"));
        assert_eq!(
            e.attributes.datacontenttype.as_deref(),
            Some("application/json")
        );
        assert_eq!(e.attributes.extensions["traceid"], "abc");
        assert_eq!(e.data.as_deref(), Some(&b"{\"a\":1}"[..]));

        for missing in ["specversion", "id", "source", "type"] {
            let mut h = h.clone();
            h.remove(format!("ce-{missing}").as_str());
            let err = from_request(&topic(), &h, Bytes::new()).unwrap_err();
            assert_eq!(err, ParseError::Missing(missing.into()));
        }
        let mut bad = h.clone();
        bad.insert("ce-specversion", HeaderValue::from_static("0.3"));
        assert!(
            from_request(&topic(), &bad, Bytes::new())
                .unwrap_err()
                .to_string()
                .contains("specversion")
        );
    }

    /// A binary-mode event of `data`, with no content type.
    fn binary_event(data: Bytes) -> Event {
        let h = headers(&[
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("ce-specversion", "1.0"),
        ]);
        from_request(&topic(), &h, data).unwrap().remove(0)
    }

    #[test]
    fn structured_and_batch_modes() {
        let h = headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"name":"ada"},"region":"eu"}"#;
        let e = &from_request(&topic(), &h, Bytes::from(body)).unwrap()[0];
        assert_eq!(e.data.as_deref(), Some(&br#"{"name":"ada"}"#[..]));
        assert_eq!(
            e.attributes.datacontenttype.as_deref(),
            Some("application/json")
        );
        assert_eq!(e.attributes.extensions["region"], "eu");
        let round = to_json(e);
        assert_eq!(round["data"]["name"], "ada");

        // Found by the fuzzer: data that is no JSON text (a string, bytes)
        // was labelled application/json when no type was given.
        for (data, ty) in [
            (r#""data":"hi""#, None),
            (r#""data_base64":"AAEC""#, None),
            (r#""data":[1]"#, Some("application/json")),
        ] {
            let body =
                format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t",{data}}}"#);
            let e = &from_request(&topic(), &h, Bytes::from(body)).unwrap()[0];
            assert_eq!(e.attributes.datacontenttype.as_deref(), ty, "{data}");
        }

        // Data that is the JSON text `null` is handed on as that text,
        // not as no data.
        let null = binary_event(Bytes::from_static(b"null"));
        assert_eq!(to_json(&null)["data"], "null");

        let b64 = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#;
        let e = &from_request(&topic(), &h, Bytes::from(b64)).unwrap()[0];
        assert_eq!(e.data.as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(to_json(e)["data_base64"], "AAEC");

        let batch = headers(&[("content-type", "application/cloudevents-batch+json")]);
        let body = r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]"#;
        assert_eq!(
            from_request(&topic(), &batch, Bytes::from(body))
                .unwrap()
                .len(),
            2
        );
        let missing = r#"[{"specversion":"1.0","id":"1","type":"t"}]"#;
        assert_eq!(
            from_request(&topic(), &batch, Bytes::from(missing)).unwrap_err(),
            ParseError::Missing("source".into())
        );
        let bad_ext = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":"x"}"#;
        assert!(from_request(&topic(), &h, Bytes::from(bad_ext)).is_err());
        let bad_time =
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#;
        assert!(
            from_request(&topic(), &h, Bytes::from(bad_time))
                .unwrap_err()
                .to_string()
                .contains("time")
        );
    }
}
