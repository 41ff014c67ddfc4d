//! Loading: from `.wasm` bytes to a pre-instantiated handler, checked before
//! anything is served.
//!
//! 1. The header must say "component" (not garbage, not a core module).
//! 2. The compiled code comes from the [`CodeCache`] or is compiled now.
//! 3. The component must export `wasi:http/incoming-handler@0.2.x`.
//! 4. Every import must be something Berth provides (the linker resolves
//!    them all into an `InstancePre`).

use crate::artifact::{self, Digest, NotAComponent};
use crate::cache::{CacheOutcome, CodeCache};
use crate::engine::BerthEngine;
use crate::instance::InstanceState;
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The export an HTTP service must have (any 0.2.x version).
pub const HTTP_HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2";

/// A component ready to be instantiated for HTTP requests.
#[derive(Clone)]
pub struct HttpHandler {
    /// The artifact digest.
    pub digest: Digest,
    /// The pre-instantiated component.
    pub pre: ProxyPre<InstanceState>,
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
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a component.
    #[error("{0}")]
    NotAComponent(#[from] NotAComponent),
    /// Wasmtime could not compile or validate it.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// It lacks the export its trigger needs.
    #[error(
        "the component does not export `{wanted}.x`, so it cannot serve HTTP (its exports: {found})"
    )]
    MissingExport {
        /// The export that was looked for.
        wanted: &'static str,
        /// What it exports instead.
        found: String,
    },
    /// It imports something Berth does not provide.
    #[error("the component imports {0}, which Berth does not provide")]
    UnknownImport(String),
}

/// Loads `bytes` into an HTTP handler.
pub fn load_http(
    engine: &BerthEngine,
    cache: &CodeCache,
    bytes: &[u8],
) -> Result<(HttpHandler, LoadReport), LoadError> {
    let started = Instant::now();
    artifact::check_component(bytes)?;
    let digest = Digest::of(bytes);
    let (component, outcome) = cache
        .load_or_compile(engine.engine(), &digest, bytes)
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
    check_http_export(engine, &component)?;
    let instance_pre = engine
        .linker()
        .instantiate_pre(&component)
        .map_err(|e| LoadError::UnknownImport(describe_import_error(&e)))?;
    let pre = ProxyPre::new(instance_pre).map_err(|e| LoadError::MissingExport {
        wanted: HTTP_HANDLER_EXPORT,
        found: format!("{e:#}"),
    })?;
    Ok((
        HttpHandler { digest, pre },
        LoadReport {
            cache: outcome,
            elapsed: started.elapsed(),
        },
    ))
}

fn check_http_export(engine: &BerthEngine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let mut names = Vec::new();
    for (name, item) in ty.exports(engine.engine()) {
        if name.starts_with(HTTP_HANDLER_EXPORT)
            && matches!(item.ty, ComponentItem::ComponentInstance(_))
        {
            return Ok(());
        }
        names.push(format!("`{name}`"));
    }
    Err(LoadError::MissingExport {
        wanted: HTTP_HANDLER_EXPORT,
        found: if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        },
    })
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
