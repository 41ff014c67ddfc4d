//! How a guest's run ended: running a guest call under its deadline, and
//! naming the cause when it did not return (trap, fuel, memory, deadline)
//! from the store's state.

use crate::values::units::{ByteSize, format_duration};
use crate::values::usage::OutcomeKind;
use crate::wasm::instance::InstanceState;
use crate::wasm::instance::limiter::{Denial, Whose};
use std::fmt;
use std::future::Future;
use std::time::Duration;
use wasmtime::{Store, Trap, WasmBacktrace};

/// How a guest's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest returned.
    Ok,
    /// The guest trapped (panic, `unreachable`, stack overflow, out-of-bounds
    /// access, ...) or a host call it made failed fatally.
    Trap {
        /// What happened, on one line.
        trap: String,
        /// Where in the guest, when known.
        backtrace: Option<String>,
    },
    /// The fuel budget ran out.
    OutOfFuel {
        /// The budget that was exhausted.
        budget: u64,
    },
    /// The guest trapped after the memory cap refused to grow its memory.
    MemoryLimit {
        /// The cap.
        cap: ByteSize,
        /// What the guest asked for in total.
        requested: ByteSize,
        /// The trap that followed.
        trap: String,
        /// Where in the guest, when known.
        backtrace: Option<String>,
    },
    /// The guest trapped after the host's memory budget, which all
    /// instances share, or its service's share of it (half), refused to
    /// grow its memory.
    HostMemory {
        /// Which of the two refused.
        whose: Whose,
        /// The growth asked for.
        growth: ByteSize,
        /// What that budget's instances held then.
        used: ByteSize,
        /// The budget.
        limit: ByteSize,
        /// The trap that followed.
        trap: String,
        /// Where in the guest, when known.
        backtrace: Option<String>,
    },
    /// The guest trapped after its table was refused a growth past
    /// [`MAX_TABLE_ELEMENTS`](crate::wasm::instance::limiter::MAX_TABLE_ELEMENTS).
    TableLimit {
        /// The elements asked for.
        requested: usize,
        /// The trap that followed.
        trap: String,
        /// Where in the guest, when known.
        backtrace: Option<String>,
    },
    /// The guest trapped after the system failed to map the memory it was
    /// allowed to grow (the address space or the machine's memory ran
    /// out).
    SystemMemory {
        /// The growth asked for.
        growth: ByteSize,
        /// What the system said.
        error: String,
        /// The trap that followed.
        trap: String,
        /// Where in the guest, when known.
        backtrace: Option<String>,
    },
    /// The wall-clock deadline passed; the instance was stopped.
    Deadline(Deadline),
}

/// Which deadline stopped an invocation, and how long it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Its own `timeout`.
    Own(Duration),
    /// The deadline of the invocation that called it, which came first:
    /// it had this long.
    Caller(Duration),
}

impl Outcome {
    /// The outcome's kind, as usage records, metrics and logs name it.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Ok => OutcomeKind::Ok,
            Outcome::Trap { .. } => OutcomeKind::Trap,
            Outcome::OutOfFuel { .. } => OutcomeKind::Fuel,
            Outcome::MemoryLimit { .. }
            | Outcome::HostMemory { .. }
            | Outcome::SystemMemory { .. }
            | Outcome::TableLimit { .. } => OutcomeKind::Memory,
            Outcome::Deadline(_) => OutcomeKind::Deadline,
        }
    }

    /// True for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The guest's stack when it trapped, if the outcome is a trap.
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            Outcome::Trap { backtrace, .. }
            | Outcome::MemoryLimit { backtrace, .. }
            | Outcome::HostMemory { backtrace, .. }
            | Outcome::SystemMemory { backtrace, .. }
            | Outcome::TableLimit { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Trap { trap, .. } => write!(f, "guest trapped: {trap}"),
            Outcome::OutOfFuel { budget } => {
                write!(f, "fuel exhausted: the budget of {budget} fuel ran out")
            }
            Outcome::MemoryLimit {
                cap,
                requested,
                trap,
                ..
            } => write!(
                f,
                "memory limit: the guest asked for {requested} of linear memory, over its limit of {cap}, then trapped: {trap}"
            ),
            Outcome::HostMemory {
                whose,
                growth,
                used,
                limit,
                trap,
                ..
            } => {
                let held = match whose {
                    Whose::Host => {
                        format!("the host's instances held {used} of its budget of {limit}")
                    }
                    Whose::Service => format!(
                        "its service's instances held {used} of its share of {limit} (half the host's budget)"
                    ),
                };
                write!(
                    f,
                    "host memory budget: the guest asked for {growth} more linear memory while {held}, then trapped: {trap}"
                )
            }
            Outcome::TableLimit {
                requested, trap, ..
            } => write!(
                f,
                "table limit: the guest asked for a table of {requested} elements, over the limit of {}, then trapped: {trap}",
                crate::wasm::instance::limiter::MAX_TABLE_ELEMENTS
            ),
            Outcome::SystemMemory {
                growth,
                error,
                trap,
                ..
            } => write!(
                f,
                "out of host memory: growing the guest's linear memory by {growth} failed ({error}), then trapped: {trap}"
            ),
            Outcome::Deadline(Deadline::Own(timeout)) => write!(
                f,
                "deadline passed: the invocation ran past its timeout of {}; the instance was stopped",
                format_duration(*timeout)
            ),
            Outcome::Deadline(Deadline::Caller(left)) => write!(
                f,
                "deadline passed: its caller's deadline came first, {} after the call started; the instance was stopped",
                format_duration(*left)
            ),
        }
    }
}

/// Why a guest call did not return normally.
#[derive(Debug)]
pub enum Stopped {
    /// It failed: a trap or a fatal host error.
    Error(wasmtime::Error),
    /// Its deadline passed.
    Deadline,
}

/// Runs `call` (a guest call on an instance) until it returns or
/// `deadline` passes. Past the deadline the call's future is dropped,
/// which stops the guest wherever it is.
pub async fn run_until_deadline<T>(
    deadline: tokio::time::Instant,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, Stopped> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Stopped::Error(error)),
        Err(_elapsed) => Err(Stopped::Deadline),
    }
}

/// The outcome of a guest call's result, with the cause named from the
/// store's state (fuel, memory limiter). `deadline` says which deadline
/// the call ran under, for when it passed.
pub fn outcome<T>(
    result: &Result<T, Stopped>,
    store: &Store<InstanceState>,
    fuel: u64,
    deadline: Deadline,
) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(Stopped::Deadline) => Outcome::Deadline(deadline),
        Err(Stopped::Error(error)) => classify(error, store, fuel),
    }
}

/// Names the cause of a failed guest call that had `fuel` to run on.
pub fn classify(error: &wasmtime::Error, store: &Store<InstanceState>, fuel: u64) -> Outcome {
    // One line for the cause; the guest's stack (attached to the error as
    // context) separately.
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| bt.to_string());
    let trap = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|cause| Some(cause) != backtrace.as_ref())
        .collect::<Vec<_>>()
        .join(": ");
    let backtrace = backtrace.map(|bt| bt.trim_end().to_owned());
    if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Outcome::OutOfFuel { budget: fuel };
    }
    let limiter = store.data().limiter();
    match limiter.denied() {
        Some(Denial::Cap { requested }) => Outcome::MemoryLimit {
            cap: ByteSize(limiter.cap() as u64),
            requested: ByteSize(*requested as u64),
            trap,
            backtrace,
        },
        Some(Denial::Budget {
            whose,
            growth,
            used,
            limit,
        }) => Outcome::HostMemory {
            whose: *whose,
            growth: ByteSize(*growth as u64),
            used: ByteSize(*used as u64),
            limit: ByteSize(*limit as u64),
            trap,
            backtrace,
        },
        Some(Denial::Table { requested }) => Outcome::TableLimit {
            requested: *requested,
            trap,
            backtrace,
        },
        Some(Denial::System { growth, error }) => Outcome::SystemMemory {
            growth: ByteSize(*growth as u64),
            error: error.clone(),
            trap,
            backtrace,
        },
        None => Outcome::Trap { trap, backtrace },
    }
}

/// Fuel used so far by `store`'s invocation, which started with `budget`.
pub fn fuel_used(store: &Store<InstanceState>, budget: u64) -> u64 {
    budget.saturating_sub(store.get_fuel().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_explain_themselves() {
        let o = Outcome::OutOfFuel { budget: 1000 };
        assert_eq!(o.kind(), OutcomeKind::Fuel);
        assert_eq!(o.kind().as_str(), "fuel");
        assert!(o.to_string().contains("fuel exhausted"));
        assert!(o.to_string().contains("1000"));
        for (whose, held) in [
            (
                Whose::Host,
                "the host's instances held 3MiB of its budget of 4MiB",
            ),
            (
                Whose::Service,
                "its service's instances held 3MiB of its share of 4MiB (half the host's budget)",
            ),
        ] {
            let o = Outcome::HostMemory {
                whose,
                growth: ByteSize::mib(2),
                used: ByteSize::mib(3),
                limit: ByteSize::mib(4),
                trap: "unreachable".into(),
                backtrace: None,
            };
            assert_eq!(o.kind(), OutcomeKind::Memory);
            assert_eq!(
                o.to_string(),
                format!(
                    "host memory budget: the guest asked for 2MiB more linear memory while {held}, then trapped: unreachable"
                )
            );
        }
        let o = Outcome::Deadline(Deadline::Own(Duration::from_millis(1500)));
        assert!(o.to_string().contains("1500ms"));
        let o = Outcome::Deadline(Deadline::Caller(Duration::from_millis(250)));
        assert!(o.to_string().contains("caller's deadline"), "{o}");
        assert!(o.to_string().contains("250ms"), "{o}");
    }
}
