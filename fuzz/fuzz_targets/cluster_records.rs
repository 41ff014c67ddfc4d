//! A cluster's records as a node reads them back from JetStream, each
//! handled as the node handles it: a services-bucket entry converged to by
//! a real control plane, an API key taken into the gateway's key table, a
//! node report, an event of the bus stream, usage records written to a
//! real ledger, another node's log line. A hostile or corrupt record is
//! refused or applied, never a crash.
#![no_main]
use berth::control::cluster::fuzzing;
use berth::control::ledger::Ledger;
use berth::triggers::http::gateway::auth::KeyTable;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn ledger() -> &'static Arc<Ledger> {
    static LEDGER: OnceLock<(tempfile::TempDir, Arc<Ledger>)> = OnceLock::new();
    &LEDGER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let ledger = Ledger::open(
                &dir.path().join("usage.db"),
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
            (dir, ledger)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let [head, key, value] = berth_fuzz::parts(data, 3)[..] else {
        unreachable!()
    };
    let key = berth_fuzz::text(key);
    match head.first().copied().unwrap_or(0) % 6 {
        0 => {
            let control = berth_fuzz::host().control();
            berth_fuzz::runtime().block_on(fuzzing::service_entry(control, &key, value));
        }
        1 => {
            static KEYS: OnceLock<KeyTable> = OnceLock::new();
            fuzzing::key_entry(KEYS.get_or_init(KeyTable::default), &key, value);
        }
        2 => {
            let _ = fuzzing::node_entry(value);
        }
        3 => fuzzing::bus_message(&key, value),
        4 => fuzzing::usage_message(ledger(), value),
        _ => fuzzing::log_line(value),
    }
});
