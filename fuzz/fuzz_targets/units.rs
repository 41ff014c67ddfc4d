//! The units parsers: byte sizes, durations, times and rates; a duration
//! printed parses back to itself.
#![no_main]
use berth::values::gateway::Rate;
use berth::values::units::{ByteSize, format_duration, parse_duration, parse_time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = text.parse::<ByteSize>();
    if let Ok(d) = parse_duration(text) {
        let printed = format_duration(d);
        assert_eq!(
            parse_duration(&printed).ok(),
            Some(d),
            "{text:?} printed as {printed:?}"
        );
    }
    let _ = parse_time(text);
    if let Ok(rate) = text.parse::<Rate>() {
        let _ = rate.interval();
    }
    let _ = berth::values::trace::TraceParent::parse(text);
    let _ = text.parse::<berth::values::digest::Digest>();
    let _ = berth::values::name::ServiceName::parse(text);
});
