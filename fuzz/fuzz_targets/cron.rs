//! Cron expressions: parsing, and the next firing after any instant is
//! later than it.
#![no_main]
use berth::values::cron::Cron;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (after, text) = data.split_at(8);
    let after = i64::from_le_bytes(after.try_into().unwrap());
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(cron) = text.parse::<Cron>() {
        if let Some(next) = cron.next_after(after) {
            assert!(next > after, "{text:?}: {next} after {after}");
        }
        let _ = format!("{cron:?}");
    }
});
