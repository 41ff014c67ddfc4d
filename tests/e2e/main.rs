//! End-to-end tests: the real `berth` binary against real guest components.
