//! The dispatcher: runs each subscription's deliveries through the
//! pipeline, like HTTP requests, and settles them.
//!
//! Per subscription, one task fetches due deliveries from the bus as long as
//! the subscription's `concurrency` allows and invokes the service's
//! `berth:events/handler` for each:
//!
//! | what happened | the delivery |
//! |---|---|
//! | `ok` | acknowledged: done |
//! | `err(retry)`, trap, fuel, memory limit, deadline | retried after the backoff, until `max_attempts`, then dead-lettered with the last error |
//! | `err(reject)` | dead-lettered at once |
//! | the component does not export the handler | dead-lettered at once |
//! | the instance could not be made (a directory gone, a secret missing) | retried like a failure |
//! | the component cannot be loaded | handed out again after 5 s, without counting an attempt |
//! | the service is busy (admission refused), or gone | handed out again shortly, without counting an attempt |
//!
//! Every delivery that is attempted is one invocation with one usage
//! record (trigger `event`, or `schedule` for a schedule's firing),
//! `rejected` when it ended before the guest ran, exactly as an HTTP
//! request's. A delivery handed back because its service was busy was no
//! attempt: it stays queued and leaves no record.
//!
//! The dispatcher only knows the [`Bus`] trait.

use super::bus::{Bus, Delivery, Settle, SubscriptionSpec};
use crate::runtime::Runtime;
use crate::runtime::pipeline::{self, GuestCall, Ran, Refusal, Start, Started};
use crate::runtime::record::{self, RecordDraft};
use crate::values::event::{Event, subscription_id};
use crate::values::id::InvocationId;
use crate::values::schedule::TOPIC_PREFIX;
use crate::values::service::{ServiceConfig, ServiceName};
use crate::values::trace::{Attr, TRACEPARENT, TraceContext};
use crate::values::units::now_ms;
use crate::values::usage::{OutcomeKind, Trigger};
use crate::wasm::bindings::EventsHostPre;
use crate::wasm::bindings::berth::events::types::{Event as WitEvent, HandleError};
use crate::wasm::component::{EVENTS_HANDLER_EXPORT, Handlers};
use crate::wasm::instance::{CallChain, InstanceState};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use wasmtime::Store;

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
        self.runtime
            .registry()
            .services()
            .iter()
            .flat_map(|service| specs(service.name(), &service.spec().config))
            .collect()
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

    /// Fetches and delivers one subscription's events until `stop`.
    async fn run(self: Arc<Self>, spec: SubscriptionSpec, stop: CancellationToken) {
        let spec = Arc::new(spec);
        let slots = Arc::new(Semaphore::new(spec.subscription.concurrency as usize));
        loop {
            let permits = tokio::select! {
                () = stop.cancelled() => return,
                permits = take_slots(&slots) => match permits {
                    Some(permits) => permits,
                    None => return,
                },
            };
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

    /// Invokes the subscription's service with one delivery and settles it.
    async fn deliver(&self, spec: &SubscriptionSpec, delivery: Delivery) {
        let settle = match self.runtime.registry().service(&spec.service) {
            None => Settle::Defer {
                at_ms: now_ms() + DEFER.as_millis() as i64,
            },
            Some(service) => {
                let (start, call) = EventCall::start(&service, spec, delivery.clone());
                match pipeline::invoke(&self.runtime, service, start, call).await {
                    Started::Refused(settle) => settle,
                    Started::Running(running) => running.finished().await.unwrap_or_else(|| {
                        retry_or_dead(spec, &delivery, "the invocation ended abnormally".into())
                    }),
                }
            }
        };
        if let Err(e) = self.bus.settle(&delivery, settle).await {
            tracing::error!(subscription = %spec.id, error = %e, "settling a delivery failed");
        }
    }
}

/// The subscriptions a service configured so holds: its own, and one per
/// schedule.
pub fn specs(name: &ServiceName, config: &ServiceConfig) -> Vec<SubscriptionSpec> {
    let schedules = config.schedules.iter().filter_map(|s| {
        s.subscription(name)
            .inspect_err(|e| tracing::error!(service = %name, schedule = %s.name, error = %e, "a schedule has no valid topic; it is skipped"))
            .ok()
    });
    config
        .subscriptions
        .iter()
        .cloned()
        .chain(schedules)
        .map(|subscription| SubscriptionSpec {
            id: subscription_id(name.as_str(), &subscription.topic),
            service: name.clone(),
            subscription,
            ack_wait: config.limits.timeout,
        })
        .collect()
}

/// Waits for one free delivery slot, then takes as many more as are free
/// (up to a fetch batch); `None` if the slots are closed.
async fn take_slots(slots: &Arc<Semaphore>) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = slots.clone().acquire_owned().await.ok()?;
    let mut permits = vec![first];
    while permits.len() < FETCH_BATCH {
        match slots.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    Some(permits)
}

/// One delivery as the pipeline runs it.
struct EventCall {
    spec: SubscriptionSpec,
    delivery: Delivery,
    guest: Option<(EventsHostPre<InstanceState>, WitEvent)>,
}

impl EventCall {
    /// The invocation of `service` for `delivery`, in the trace of the
    /// event's publisher.
    fn start(
        service: &crate::runtime::registry::Service,
        spec: &SubscriptionSpec,
        delivery: Delivery,
    ) -> (Start, EventCall) {
        let event = &delivery.event;
        let trigger = if event.topic.as_str().starts_with(TOPIC_PREFIX) {
            Trigger::Schedule
        } else {
            Trigger::Event
        };
        let id = InvocationId::new();
        let parent = event.attributes.extensions.get(TRACEPARENT);
        let trace = TraceContext::child_of(parent.map(String::as_str));
        let span = record::span(service, id, trigger, &trace);
        span.record("topic", tracing::field::display(&event.topic));
        span.record("event", event.attributes.id.as_str());
        span.record("attempt", delivery.attempt);
        let start = Start {
            trigger,
            id,
            trace,
            span,
            chain: CallChain::default(),
            caller_deadline: None,
            default_status: None,
            bytes_in: event.data.as_ref().map_or(0, |d| d.len() as u64),
            attributes: vec![
                (
                    "messaging.destination.name",
                    Attr::str(event.topic.to_string()),
                ),
                (
                    "messaging.message.id",
                    Attr::str(event.attributes.id.clone()),
                ),
                ("berth.attempt", Attr::Int(delivery.attempt as i64)),
            ],
        };
        let call = EventCall {
            spec: spec.clone(),
            delivery,
            guest: None,
        };
        (start, call)
    }
}

impl GuestCall for EventCall {
    type Returned = Result<(), HandleError>;
    type Output = Settle;

    fn is_attempt(&self, refusal: &Refusal) -> bool {
        // Busy is not the event's fault, and nothing was tried.
        !matches!(refusal, Refusal::Busy(_))
    }

    fn select(&mut self, handlers: &Handlers) -> Result<(), Refusal> {
        let pre = handlers.events.clone().ok_or(Refusal::NoHandler {
            export: EVENTS_HANDLER_EXPORT,
        })?;
        self.guest = Some((pre, to_wit(&self.delivery.event, self.delivery.attempt)));
        Ok(())
    }

    fn prepare(
        &mut self,
        _store: &mut Store<InstanceState>,
        _record: &Arc<RecordDraft>,
    ) -> Result<(), Refusal> {
        Ok(())
    }

    fn call<'a>(
        &'a mut self,
        store: &'a mut Store<InstanceState>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), HandleError>>> + Send + 'a {
        let guest = self.guest.take();
        async move {
            let (pre, event) =
                guest.ok_or_else(|| wasmtime::format_err!("the delivery was not prepared"))?;
            let instance = crate::wasm::instance::instance(store, pre.instance_pre()).await?;
            let host = crate::wasm::bindings::EventsHost::new(&mut *store, &instance)?;
            host.berth_events_handler()
                .call_handle(&mut *store, &event)
                .await
        }
    }

    fn finish(self, ran: Ran<Result<(), HandleError>>, record: &RecordDraft) -> Settle {
        let (spec, delivery) = (&self.spec, &self.delivery);
        match ran.returned {
            Some(Ok(())) => Settle::Ack,
            Some(Err(HandleError::Reject(why))) => {
                record.refine(OutcomeKind::Error);
                dead(spec, format!("the handler rejected it: {why}"))
            }
            Some(Err(HandleError::Retry(why))) => {
                record.refine(OutcomeKind::Error);
                let error = format!("the handler asked to retry: {why}");
                retry_or_dead(spec, delivery, error)
            }
            None => retry_or_dead(spec, delivery, ran.outcome.to_string()),
        }
    }

    fn refused(self, refusal: &Refusal, _record: &RecordDraft) -> Settle {
        let (spec, delivery) = (&self.spec, &self.delivery);
        match refusal {
            Refusal::Busy(_) | Refusal::Abandoned => Settle::Defer {
                at_ms: now_ms() + DEFER.as_millis() as i64,
            },
            // Not the event's fault: try again later, without an attempt.
            Refusal::Unloadable(_) => Settle::Defer {
                at_ms: now_ms() + LOAD_RETRY.as_millis() as i64,
            },
            Refusal::NoHandler { export } => {
                dead(spec, format!("the service does not export `{export}`"))
            }
            Refusal::Instance(_)
            | Refusal::TooLarge { .. }
            | Refusal::Input(_)
            | Refusal::Denied(_) => retry_or_dead(spec, delivery, refusal.to_string()),
        }
    }
}

/// Dead-letters a delivery at once.
fn dead(spec: &SubscriptionSpec, error: String) -> Settle {
    tracing::warn!(subscription = %spec.id, "event dead-lettered: {error}");
    Settle::Dead { error }
}

/// Retries a failed delivery after its backoff, or dead-letters it once
/// it has had all its attempts.
fn retry_or_dead(spec: &SubscriptionSpec, delivery: &Delivery, error: String) -> Settle {
    if delivery.attempt >= spec.subscription.max_attempts {
        tracing::warn!(
            subscription = %spec.id,
            "event dead-lettered after {} attempts: {error}",
            delivery.attempt
        );
        return Settle::Dead { error };
    }
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

fn to_wit(event: &Event, attempt: u32) -> WitEvent {
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
