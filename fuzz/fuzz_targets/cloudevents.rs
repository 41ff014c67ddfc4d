//! CloudEvents as `POST /v1/events/{topic}` reads them: binary mode (`ce-`
//! headers), structured and batch JSON. Every event read is on the topic
//! it was published on and has an id, a source and a type.
#![no_main]
use berth::triggers::events::cloudevents;
use berth::values::topic::Topic;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 4] = [
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "application/json",
    "",
];

fuzz_target!(|data: &[u8]| {
    let [head, body] = berth_fuzz::parts(data, 2)[..] else {
        unreachable!()
    };
    let Some((&kind, head)) = head.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    let content_type = CONTENT_TYPES[kind as usize % CONTENT_TYPES.len()];
    if !content_type.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
    }
    // Header lines `name: value`, as hyper would have parsed them.
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    let topic = Topic::parse("orders.created").unwrap();
    if let Ok(events) = cloudevents::from_request(&topic, &headers, Bytes::copy_from_slice(body)) {
        for event in &events {
            assert_eq!(event.topic, topic);
            let json = cloudevents::to_json(event);
            for attr in ["id", "source", "type", "specversion"] {
                assert!(json[attr].is_string(), "no {attr} in {json}");
            }
            let _ = event.size();
            // What Berth hands on as structured JSON reads back the same.
            let mut structured = HeaderMap::new();
            structured.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPES[0]),
            );
            let again =
                cloudevents::from_request(&topic, &structured, Bytes::from(json.to_string()))
                    .unwrap_or_else(|e| panic!("{json} does not read back: {e}"));
            // Structured JSON without `datacontenttype` means JSON data
            // (CloudEvents' JSON format): read back, it says so.
            let mut expected = event.attributes.clone();
            if expected.datacontenttype.is_none()
                && json
                    .get("data")
                    .is_some_and(|d| !d.is_string() && !d.is_null())
            {
                expected.datacontenttype = Some("application/json".into());
            }
            assert_eq!(again[0].attributes, expected, "{json}");
        }
    }
});
