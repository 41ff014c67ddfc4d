//! Topics and topic patterns: parsing, and matching as the bus routes.
#![no_main]
use berth::values::topic::{Topic, TopicPattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [pattern, topic] = berth_fuzz::parts(data, 2)[..] else {
        unreachable!()
    };
    let (pattern, topic) = (berth_fuzz::text(pattern), berth_fuzz::text(topic));
    let topic = Topic::parse(&topic);
    if let Ok(topic) = &topic {
        assert!(TopicPattern::exact(topic).matches(topic));
        assert_eq!(topic.as_str().parse::<Topic>().ok().as_ref(), Some(topic));
        let _ = topic.is_system();
    }
    if let Ok(pattern) = TopicPattern::parse(&pattern) {
        assert_eq!(
            TopicPattern::parse(pattern.as_str()).ok(),
            Some(pattern.clone())
        );
        if let Ok(topic) = &topic {
            let _ = pattern.matches(topic);
        }
    }
});
