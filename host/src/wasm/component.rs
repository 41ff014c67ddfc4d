//! Loading: from `.wasm` bytes to pre-instantiated handlers, checked before
//! anything is served.
//!
//! 1. The header must say "component" (not garbage, not a core module).
//! 2. The compiled code comes from the [`CodeCache`] or is compiled now.
//! 3. Every import must be something Berth provides (the linker resolves
//!    them all into an `InstancePre`).
//! 4. The component must export a trigger Berth knows:
//!    `wasi:http/incoming-handler@0.2.x` (HTTP, WASI 0.2),
//!    `wasi:http/handler@0.3.x` (HTTP, WASI 0.3: the `wasi:http/service`
//!    world), `berth:events/handler` (events and schedules), or an HTTP
//!    handler and the events handler; [`Handlers::check`] then checks that
//!    a service's triggers have the exports they need.

use crate::values::digest::Digest;
use crate::values::service::ServiceConfig;
use crate::wasm::artifact::{self, NotAComponent};
use crate::wasm::bindings::EventsHostPre;
use crate::wasm::cache::{CacheOutcome, CodeCache};
use crate::wasm::engine::{BerthEngine, Flavour};
use crate::wasm::instance::InstanceState;
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// The export an HTTP service must have: any 0.2.x version of ...
pub const HTTP_HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2";

/// ... or any 0.3.x version of the WASI 0.3 handler.
pub const HTTP_HANDLER_EXPORT_P3: &str = "wasi:http/handler@0.3";

/// Either HTTP handler, as a refusal names them.
pub const HTTP_HANDLERS: &str = "wasi:http/incoming-handler@0.2.x` or `wasi:http/handler@0.3.x";

/// How a component serves HTTP: the WASI 0.2 handler (one request per
/// call, the response through an out-parameter) or the WASI 0.3 one (an
/// async function returning the response; its body and any tasks it spawns
/// go on after it returns).
#[derive(Clone)]
pub enum HttpHandler {
    /// `wasi:http/incoming-handler@0.2.x`.
    P2(ProxyPre<InstanceState>),
    /// `wasi:http/handler@0.3.x`.
    P3(ServicePre<InstanceState>),
}

/// The export an event-driven service must have (any 0.1.x version).
pub const EVENTS_HANDLER_EXPORT: &str = "berth:events/handler@0.1";

/// A component ready to be instantiated for each kind of trigger it
/// exports.
#[derive(Clone)]
pub struct Handlers {
    /// The artifact digest.
    pub digest: Digest,
    /// The engine it was compiled for: its stores are made by it.
    pub engine: wasmtime::Engine,
    /// For HTTP requests, if it exports an HTTP handler.
    pub http: Option<HttpHandler>,
    /// For events, if it exports `berth:events/handler`.
    pub events: Option<EventsHostPre<InstanceState>>,
}

impl Handlers {
    /// Checks that `config`'s triggers have the exports they need.
    pub fn check(&self, config: &ServiceConfig) -> Result<(), LoadError> {
        if !config.routes.is_empty() && self.http.is_none() {
            return Err(LoadError::MissingExport {
                wanted: format!(
                    "{HTTP_HANDLER_EXPORT}.x` or `{HTTP_HANDLER_EXPORT_P3}.x` (the service has routes)"
                ),
                found: self.exports(),
            });
        }
        if config.needs_event_handler() && self.events.is_none() {
            return Err(LoadError::MissingExport {
                wanted: format!(
                    "{EVENTS_HANDLER_EXPORT}.x` (the service has subscriptions or schedules)"
                ),
                found: self.exports(),
            });
        }
        Ok(())
    }

    fn exports(&self) -> String {
        let names: Vec<&str> = [
            self.http.as_ref().map(|http| match http {
                HttpHandler::P2(_) => "`wasi:http/incoming-handler`",
                HttpHandler::P3(_) => "`wasi:http/handler`",
            }),
            self.events.as_ref().map(|_| "`berth:events/handler`"),
        ]
        .into_iter()
        .flatten()
        .collect();
        names.join(", ")
    }
}

/// What loading a component did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Whether the compiled code came from the cache.
    pub cache: CacheOutcome,
    /// How long loading took, compile included.
    pub elapsed: Duration,
}

/// Why a component cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a component.
    #[error("{0}")]
    NotAComponent(#[from] NotAComponent),
    /// Wasmtime could not compile or validate it.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// It lacks the export its trigger needs.
    #[error("the component does not export `{wanted} (its exports: {found})")]
    MissingExport {
        /// The export that was looked for, and why.
        wanted: String,
        /// What it exports instead.
        found: String,
    },
    /// It imports something Berth does not provide.
    #[error("the component imports {0}, which Berth does not provide")]
    UnknownImport(String),
}

/// Loads `bytes` into handlers for every trigger the component exports.
pub fn load(
    engine: &BerthEngine,
    cache: &CodeCache,
    bytes: &[u8],
) -> Result<(Handlers, LoadReport), LoadError> {
    let started = Instant::now();
    artifact::check_component(bytes)?;
    let digest = Digest::of(bytes);
    // The plain engine first: a component needing the async ABI or WASI
    // 0.3 fails its validation or its imports there, at once, and runs on
    // the concurrent one. What the last engine says is the error.
    let mut result = Err(LoadError::Invalid("no engine".into()));
    for flavour in engine.flavours() {
        result = cache
            .load_or_compile(flavour.engine(), &digest, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
            .and_then(|(component, outcome)| Ok((handlers(flavour, digest, &component)?, outcome)));
        if result.is_ok() {
            break;
        }
    }
    let (handlers, outcome) = result?;
    Ok((
        handlers,
        LoadReport {
            cache: outcome,
            elapsed: started.elapsed(),
        },
    ))
}

/// Where a service's component comes from, to load it again after it was
/// unloaded for being idle: the code cache first (no artifact needed), the
/// artifact store if the cache has no valid entry.
#[derive(Clone, Debug)]
pub struct Source {
    /// The artifact.
    pub digest: Digest,
    /// Where the artifact is stored.
    pub artifacts: crate::wasm::artifact::ArtifactStore,
    /// Where its compiled code is cached.
    pub cache: CodeCache,
}

impl Source {
    /// Loads the component into handlers checked against `config`.
    pub fn load(
        &self,
        engine: &BerthEngine,
        config: &ServiceConfig,
    ) -> Result<(Handlers, LoadReport), LoadError> {
        let started = Instant::now();
        // The first engine with a cached entry that takes the component.
        let cached = engine.flavours().into_iter().find_map(|flavour| {
            match self.cache.load_cached(flavour.engine(), &self.digest) {
                Ok(Some(component)) => handlers(flavour, self.digest, &component).ok(),
                Ok(None) | Err(_) => None,
            }
        });
        let handlers = match cached {
            Some(handlers) => (
                handlers,
                LoadReport {
                    cache: CacheOutcome::Hit,
                    elapsed: started.elapsed(),
                },
            ),
            None => {
                let bytes = self
                    .artifacts
                    .read(&self.digest)
                    .map_err(|e| LoadError::Invalid(e.to_string()))?;
                load(engine, &self.cache, &bytes)?
            }
        };
        handlers.0.check(config)?;
        Ok(handlers)
    }
}

/// Builds the pre-instantiated handlers of a compiled component.
fn handlers(
    engine: &Flavour,
    digest: Digest,
    component: &Component,
) -> Result<Handlers, LoadError> {
    let instance_pre = engine
        .linker()
        .instantiate_pre(component)
        .map_err(|e| LoadError::UnknownImport(describe_import_error(&e)))?;
    let exports = exports(engine, component);
    // `PREFIX.x`: `@0.3` matches `@0.3.0` and `@0.3.2`, never `@0.30.0`.
    let exported = |prefix: &str| {
        exports.iter().any(|name| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
        })
    };
    // A component exporting both HTTP handlers is served by the newer one.
    let http = if exported(HTTP_HANDLER_EXPORT_P3) {
        Some(HttpHandler::P3(
            ServicePre::new(instance_pre.clone())
                .map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
        ))
    } else if exported(HTTP_HANDLER_EXPORT) {
        Some(HttpHandler::P2(
            ProxyPre::new(instance_pre.clone())
                .map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
        ))
    } else {
        None
    };
    let events = if exported(EVENTS_HANDLER_EXPORT) {
        Some(EventsHostPre::new(instance_pre).map_err(|e| LoadError::Invalid(format!("{e:#}")))?)
    } else {
        None
    };
    if http.is_none() && events.is_none() {
        return Err(LoadError::MissingExport {
            wanted: format!(
                "{HTTP_HANDLER_EXPORT}.x`, `{HTTP_HANDLER_EXPORT_P3}.x` or `{EVENTS_HANDLER_EXPORT}.x`, so it has no trigger"
            ),
            found: if exports.is_empty() {
                "none".into()
            } else {
                exports
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    Ok(Handlers {
        digest,
        engine: engine.engine().clone(),
        http,
        events,
    })
}

/// The names of the instances a component exports.
fn exports(engine: &Flavour, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine.engine())
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// Wasmtime says "component imports instance `x`, but a matching
/// implementation was not found in the linker: ..."; keep the kind and the
/// name of the first import it could not satisfy.
fn describe_import_error(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    let Some(a) = text.find('`') else { return text };
    let Some(len) = text[a + 1..].find('`') else {
        return text;
    };
    let kind = text[..a].trim().rsplit(' ').next().unwrap_or("item");
    format!("{kind} `{}`", &text[a + 1..a + 1 + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_errors_keep_the_name() {
        let e = wasmtime::format_err!(
            "component imports instance `acme:inventory/stock@1.0.0`, but a matching implementation was not found in the linker: instance export `count` has the wrong type"
        );
        assert_eq!(
            describe_import_error(&e),
            "instance `acme:inventory/stock@1.0.0`"
        );
    }
}
