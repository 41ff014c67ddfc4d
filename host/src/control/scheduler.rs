//! The scheduler: fires the schedules of the runtime's services on time.
//! Each firing is an event on the service's own topic
//! `berth.schedule.<service>.<name>`, published on the bus and delivered
//! like any other (durable, retried, dead-lettered); the time of each
//! firing is recorded in the state database.
//!
//! A schedule that should have fired while the host was down fires once
//! when it comes back, not once per missed time.
//!
//! Firing times are on the wall clock (UTC), which can step: when it steps
//! forward past firing times, a schedule fires once, as after downtime;
//! when it steps back, a cron schedule waits until the clock reaches its
//! next time again (a time never fires twice), and an `every` schedule
//! keeps its interval. The scheduler looks at the clock at least every
//! second, so a step is seen within one.
//!
//! When each schedule last fired is kept by [`Firings`]: the state
//! database of a standalone host ([`LocalFirings`]), or a cluster's KV
//! bucket, where the node that wins a compare-and-swap on the schedule's
//! entry fires it — once per cluster per due time.

use crate::control::state::State;
use crate::runtime::Runtime;
use crate::triggers::events::bus::Bus;
use crate::values::event::{Attributes, Event};
use crate::values::id::InvocationId;
use crate::values::schedule::Schedule;
use crate::values::service::ServiceName;
use crate::values::units::{now_ms, rfc3339};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The longest the scheduler sleeps without looking at the wall clock.
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// A wall clock that moved this much less than the monotonic one stepped
/// back.
const STEP_BACK: i64 = 1000;

/// Where the last firing of each schedule is kept.
#[async_trait::async_trait]
pub trait Firings: Send + Sync + 'static {
    /// When each of `names` (schedules of `service`) last fired; one never
    /// seen before starts counting at `now` (and is recorded so).
    async fn last_fired(
        &self,
        service: &ServiceName,
        names: &[String],
        now: i64,
    ) -> HashMap<String, i64>;

    /// Whether this host is to fire `schedule` of `service` now (in a
    /// cluster: whether it is due by the shared record, and this node won
    /// it).
    async fn claim(&self, service: &ServiceName, schedule: &Schedule, now: i64) -> bool;

    /// Records a firing once its event is published (at least once: a
    /// crash in between fires it again).
    async fn fired(&self, service: &ServiceName, name: &str, now: i64);
}

/// The firings of a standalone host, in its state database.
pub struct LocalFirings(pub Arc<Mutex<State>>);

impl LocalFirings {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Firings for LocalFirings {
    async fn last_fired(
        &self,
        service: &ServiceName,
        names: &[String],
        now: i64,
    ) -> HashMap<String, i64> {
        let mut fired: HashMap<String, i64> = match self.state().schedule_fired(service) {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                tracing::error!(service = %service, error = %e, "cannot read the schedule state");
                Default::default()
            }
        };
        for name in names {
            if !fired.contains_key(name) {
                // A new schedule starts counting now.
                self.fired(service, name, now).await;
                fired.insert(name.clone(), now);
            }
        }
        fired
    }

    async fn claim(&self, _service: &ServiceName, _schedule: &Schedule, _now: i64) -> bool {
        true
    }

    async fn fired(&self, service: &ServiceName, name: &str, now: i64) {
        if let Err(e) = self.state().set_schedule_fired(service, name, now) {
            tracing::error!(service = %service, error = %e, "cannot record the schedule state");
        }
    }
}

/// Fires the schedules of a runtime's services on time.
pub struct Scheduler {
    runtime: Arc<Runtime>,
    bus: Arc<dyn Bus>,
    firings: Arc<dyn Firings>,
    entries: Mutex<Vec<Entry>>,
    changed: Notify,
}

#[derive(Debug, Clone)]
struct Entry {
    service: ServiceName,
    schedule: Schedule,
    next_ms: i64,
}

impl Scheduler {
    /// A scheduler for `runtime`'s services, keeping firings in `firings`.
    pub fn new(
        runtime: Arc<Runtime>,
        bus: Arc<dyn Bus>,
        firings: Arc<dyn Firings>,
    ) -> Arc<Scheduler> {
        let scheduler = Arc::new(Scheduler {
            runtime,
            bus,
            firings,
            entries: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        tokio::spawn(scheduler.clone().run());
        scheduler
    }

    /// Takes the schedules of the runtime's services as they are now. A
    /// schedule that should have fired since it last did (the host was
    /// down) is due at once — once.
    pub async fn sync(&self) {
        let now = now_ms();
        let mut entries = Vec::new();
        for service in self.runtime.registry().services() {
            let schedules = &service.spec().config.schedules;
            if schedules.is_empty() {
                continue;
            }
            let names: Vec<String> = schedules.iter().map(|s| s.name.clone()).collect();
            let fired = self.firings.last_fired(service.name(), &names, now).await;
            for schedule in schedules {
                let mut last = fired.get(&schedule.name).copied().unwrap_or(now);
                // Fired "in the future": the clock stepped back since. An
                // interval counts from now.
                if schedule.every.is_some() {
                    last = last.min(now);
                }
                let Some(next) = schedule.next_after(last) else {
                    continue;
                };
                // A time already past (missed while the host was down)
                // fires once, at the next turn of the loop.
                entries.push(Entry {
                    service: service.name().clone(),
                    schedule: schedule.clone(),
                    next_ms: next,
                });
            }
        }
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = entries;
        self.changed.notify_one();
    }

    async fn run(self: Arc<Self>) {
        let mut clock = (now_ms(), Instant::now());
        loop {
            let next = self
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|e| e.next_ms)
                .min();
            let wait = match next {
                Some(next) => Duration::from_millis((next - now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                () = self.changed.notified() => continue,
                () = tokio::time::sleep(wait.min(CLOCK_CHECK)) => {}
            }
            let now = now_ms();
            // How far the wall clock stepped back since the last look:
            // interval schedules move back with it.
            let step = clock.1.elapsed().as_millis() as i64 - (now - clock.0);
            clock = (now, Instant::now());
            if step > STEP_BACK {
                tracing::warn!(
                    back_ms = step,
                    "the wall clock stepped back; interval schedules keep their interval, cron schedules wait for their next time"
                );
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                for entry in entries.iter_mut().filter(|e| e.schedule.every.is_some()) {
                    entry.next_ms = entry.next_ms.saturating_sub(step);
                }
            }
            let due: Vec<Entry> = {
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                let due = entries
                    .iter()
                    .filter(|e| e.next_ms <= now)
                    .cloned()
                    .collect();
                for entry in entries.iter_mut().filter(|e| e.next_ms <= now) {
                    entry.next_ms = entry.schedule.next_after(now).unwrap_or(i64::MAX);
                }
                due
            };
            for entry in due {
                self.fire(&entry, now).await;
            }
        }
    }

    async fn fire(&self, entry: &Entry, now: i64) {
        let name = &entry.schedule.name;
        let topic = match entry.schedule.topic(&entry.service) {
            Ok(topic) => topic,
            Err(e) => {
                tracing::error!(service = %entry.service, schedule = %name, error = %e, "a schedule has no valid topic; it cannot fire");
                return;
            }
        };
        let data = serde_json::json!({
            "schedule": name,
            "due": rfc3339(entry.next_ms),
            "fired": rfc3339(now),
        });
        if !self
            .firings
            .claim(&entry.service, &entry.schedule, now)
            .await
        {
            tracing::debug!(service = %entry.service, schedule = %name, "fired by another node");
            return;
        }
        let event = Event {
            topic,
            attributes: Attributes {
                id: InvocationId::new().to_string(),
                source: format!("/berth/schedules/{}/{name}", entry.service),
                ty: "berth.schedule".into(),
                subject: Some(name.clone()),
                time: Some(rfc3339(now)),
                datacontenttype: Some("application/json".into()),
                extensions: Default::default(),
            },
            data: Some(data.to_string().into()),
        };
        // Published first, recorded second: a crash in between fires it
        // again after a restart (at least once, like every delivery).
        match self.bus.publish(vec![event]).await {
            Ok(_) => {
                tracing::info!(service = %entry.service, schedule = %name, "schedule fired");
                self.firings.fired(&entry.service, name, now).await;
            }
            Err(e) => {
                tracing::error!(service = %entry.service, schedule = %name, error = %e, "a schedule could not fire")
            }
        }
    }
}
