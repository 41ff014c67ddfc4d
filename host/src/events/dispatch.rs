//! The dispatcher: runs each subscription's deliveries through the same
//! admission and instance code as HTTP requests, and settles them.
//!
//! Per subscription, one task fetches due deliveries from the bus as long as
//! the subscription's `concurrency` allows and invokes the service's
//! `berth:events/handler` for each:
//!
//! | handler result | the delivery |
//! |---|---|
//! | `ok` | acknowledged: done |
//! | `err(retry)`, trap, fuel, memory limit, deadline | retried after the backoff, until `max_attempts`, then dead-lettered with the last error |
//! | `err(reject)` | dead-lettered at once |
//! | the service is busy (admission refused) or not loaded | handed out again shortly, without counting an attempt |
//!
//! Every delivery that reaches the guest is one invocation with one usage
//! record (trigger `event`, or `schedule` for a schedule's firing). A
//! delivery handed back because the service was busy or not loadable never
//! ran, costs nothing and leaves no record: it stays queued.
//!
//! The dispatcher only knows the [`Bus`] trait.

use super::bindings::berth::events::types::{Event as WitEvent, HandleError};
use super::bus::{Bus, Delivery, Settle, SubscriptionSpec};
use crate::instance::{self, CallChain};
use crate::invoke::{self, Draft, InvocationId, OnCpu, Outcome};
use crate::runtime::{Runtime, Service, Warmth};
use crate::trace::{TRACEPARENT, TraceContext};
use crate::units::now_ms;
use crate::usage::Trigger;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a delivery waits when its service cannot take it now.
const DEFER: Duration = Duration::from_millis(200);

/// How long a delivery waits when its service's component cannot be
/// loaded (a damaged artifact, say).
const LOAD_RETRY: Duration = Duration::from_secs(5);

/// Most deliveries fetched at once.
const FETCH_BATCH: usize = 64;

/// Runs the subscriptions of a runtime's services.
pub struct Dispatcher {
    runtime: Arc<Runtime>,
    bus: Arc<dyn Bus>,
    running: Mutex<HashMap<String, (SubscriptionSpec, CancellationToken)>>,
    stop: CancellationToken,
}

/// How one delivery ended, for the log and the settle.
enum Handled {
    Ok,
    Retry(String),
    Reject(String),
}

impl Dispatcher {
    /// A dispatcher for `runtime`'s services on `bus`.
    pub fn new(runtime: Arc<Runtime>, bus: Arc<dyn Bus>) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            runtime,
            bus,
            running: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        })
    }

    /// The subscriptions the runtime's services hold now: their own and
    /// one per schedule.
    pub fn wanted(&self) -> Vec<SubscriptionSpec> {
        let mut specs = Vec::new();
        for service in self.runtime.services() {
            let name = service.name().as_str();
            let config = &service.spec.config;
            let subscriptions = config
                .subscriptions
                .iter()
                .cloned()
                .chain(config.schedules.iter().map(|s| s.subscription(name)));
            for subscription in subscriptions {
                specs.push(SubscriptionSpec {
                    id: super::subscription_id(name, &subscription.topic),
                    service: name.to_owned(),
                    subscription,
                });
            }
        }
        specs
    }

    /// Brings the bus and the running subscription tasks in line with the
    /// runtime's services. Call after every change to them.
    pub async fn sync(self: &Arc<Self>) -> Result<(), super::bus::BusError> {
        let wanted = self.wanted();
        self.bus.set_subscriptions(wanted.clone()).await?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let keep: HashMap<String, SubscriptionSpec> =
            wanted.into_iter().map(|s| (s.id.clone(), s)).collect();
        running.retain(|id, (spec, stop)| {
            let same = keep.get(id) == Some(spec);
            if !same {
                stop.cancel();
            }
            same
        });
        for (id, spec) in keep {
            if running.contains_key(&id) {
                continue;
            }
            let stop = self.stop.child_token();
            running.insert(id, (spec.clone(), stop.clone()));
            let this = self.clone();
            tokio::spawn(async move { this.run(spec, stop).await });
        }
        Ok(())
    }

    /// Stops every subscription task.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    async fn run(self: Arc<Self>, spec: SubscriptionSpec, stop: CancellationToken) {
        let spec = Arc::new(spec);
        let slots = Arc::new(Semaphore::new(spec.subscription.concurrency as usize));
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < FETCH_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let deliveries = tokio::select! {
                () = stop.cancelled() => return,
                fetched = self.bus.fetch(&spec.id, permits.len()) => fetched,
            };
            let deliveries = match deliveries {
                Ok(d) if d.is_empty() => {
                    // The subscription is gone (or the bus woke us for
                    // nothing): `sync` stops this task if it is gone.
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(subscription = %spec.id, error = %e, "fetching deliveries failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for (delivery, permit) in deliveries.into_iter().zip(permits) {
                let this = self.clone();
                let spec = spec.clone();
                self.runtime.tasks().spawn(async move {
                    let _permit = permit;
                    this.deliver(&spec, delivery).await;
                });
            }
        }
    }

    async fn deliver(&self, spec: &SubscriptionSpec, delivery: Delivery) {
        let settle = match self
            .runtime
            .service(&crate::service::ServiceName::parse(&spec.service).expect("valid"))
        {
            None => Settle::Defer {
                at_ms: now_ms() + DEFER.as_millis() as i64,
            },
            Some(service) => self.invoke(&service, spec, &delivery).await,
        };
        if let Err(e) = self.bus.settle(&delivery, settle).await {
            tracing::error!(subscription = %spec.id, error = %e, "settling a delivery failed");
        }
    }

    async fn invoke(
        &self,
        service: &Arc<Service>,
        spec: &SubscriptionSpec,
        delivery: &Delivery,
    ) -> Settle {
        let permit = match service.admission.admit(self.runtime.host_slots()).await {
            Ok(permit) => permit,
            Err(_) => {
                return Settle::Defer {
                    at_ms: now_ms() + DEFER.as_millis() as i64,
                };
            }
        };
        let (handlers, warmth) = match service.handlers(&self.runtime).await {
            Ok(loaded) => loaded,
            // Not the event's fault: try again later, without an attempt.
            Err(_) => {
                return Settle::Defer {
                    at_ms: now_ms() + LOAD_RETRY.as_millis() as i64,
                };
            }
        };
        let Some(pre) = handlers.events.as_ref() else {
            return Settle::Dead {
                error: "the service does not export berth:events/handler".into(),
            };
        };
        let id = InvocationId::new();
        let event = &delivery.event;
        let trigger = if event
            .topic
            .as_str()
            .starts_with(super::schedule::TOPIC_PREFIX)
        {
            Trigger::Schedule
        } else {
            Trigger::Event
        };
        let trace = TraceContext::child_of(
            event
                .attributes
                .extensions
                .get(TRACEPARENT)
                .map(String::as_str),
        );
        let span = invoke::span(service, id, trigger, &trace);
        span.record("topic", tracing::field::display(&event.topic));
        span.record("event", event.attributes.id.as_str());
        span.record("attempt", delivery.attempt);
        let draft = Draft::new(&self.runtime, service, trigger, id, span.clone(), 1);
        if matches!(warmth, Warmth::Cold(_)) {
            draft.cold();
        }
        draft.bytes_in.store(
            event.data.as_ref().map_or(0, |d| d.len() as u64),
            Ordering::Relaxed,
        );
        let limits = service.limits();
        let handled = async {
            let _permit = permit;
            let deadline = tokio::time::Instant::now() + limits.timeout;
            let mut store = match instance::new_store(
                &self.runtime,
                service,
                id,
                trace,
                deadline,
                CallChain::default(),
            ) {
                Ok(store) => store,
                Err(e) => {
                    tracing::error!(error = %e, "the instance could not be made");
                    draft.outcome("rejected");
                    draft.done();
                    return Handled::Retry(format!("the instance could not be made: {e}"));
                }
            };
            let wit = to_wit(event, delivery.attempt);
            let call = OnCpu::new(
                async {
                    let host = pre.instantiate_async(&mut store).await?;
                    host.berth_events_handler()
                        .call_handle(&mut store, &wit)
                        .await
                },
                draft.cpu_ns.clone(),
            );
            let result = invoke::run_until_deadline(deadline, call).await;
            let outcome = invoke::outcome(&result, &store, limits);
            invoke::log_outcome(&outcome, &store, limits);
            draft.ran(&outcome, &store, limits);
            if matches!(result, Ok(Err(_))) {
                draft.outcome("error");
            }
            drop(store);
            draft.done();
            match (result, outcome) {
                (Ok(Ok(())), _) => Handled::Ok,
                (Ok(Err(HandleError::Retry(why))), _) => {
                    Handled::Retry(format!("the handler asked to retry: {why}"))
                }
                (Ok(Err(HandleError::Reject(why))), _) => {
                    Handled::Reject(format!("the handler rejected it: {why}"))
                }
                (Err(_), outcome) => Handled::Retry(describe(&outcome)),
            }
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        match handled {
            Handled::Ok => Settle::Ack,
            Handled::Reject(error) => {
                tracing::warn!(subscription = %spec.id, "event dead-lettered: {error}");
                Settle::Dead { error }
            }
            Handled::Retry(error) if delivery.attempt >= spec.subscription.max_attempts => {
                tracing::warn!(
                    subscription = %spec.id,
                    "event dead-lettered after {} attempts: {error}",
                    delivery.attempt
                );
                Settle::Dead { error }
            }
            Handled::Retry(error) => {
                let delay = spec.subscription.delay_after(delivery.attempt);
                tracing::info!(
                    subscription = %spec.id,
                    retry_in_ms = delay.as_millis() as u64,
                    "delivery failed, will retry: {error}"
                );
                Settle::Retry {
                    at_ms: now_ms() + delay.as_millis() as i64,
                    error,
                }
            }
        }
    }
}

fn describe(outcome: &Outcome) -> String {
    outcome.to_string()
}

fn to_wit(event: &super::Event, attempt: u32) -> WitEvent {
    let a = &event.attributes;
    WitEvent {
        topic: event.topic.to_string(),
        id: a.id.clone(),
        source: a.source.clone(),
        type_: a.ty.clone(),
        subject: a.subject.clone(),
        time: a.time.clone(),
        datacontenttype: a.datacontenttype.clone(),
        data: event.data.as_ref().map(|d| d.to_vec()),
        extensions: a
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        attempt,
    }
}
