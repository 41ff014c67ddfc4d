//! End-to-end tests: the real `berth` binary, listening on `127.0.0.1:0`,
//! against guest components built from source (`tests/programs`).

mod capabilities;
mod chaos;
mod cluster;
mod console;
mod control;
mod crash;
mod creds;
mod develop;
mod escape;
mod events;
mod examples;
mod failures;
mod gateway;
mod host;
mod limits;
mod logs;
mod nats;
mod netns;
mod oci;
mod openapi;
mod pipeline;
mod reuse;
mod scale;
mod serving;
mod startup;
mod support;
mod tools;
mod traces;
mod wasi03;
