//! The `berth.toml` manifest: the services of an app, their components,
//! routes, limits and build commands.
//!
//! ```toml
//! [service.hello]
//! component = "hello.wasm"      # path relative to the manifest
//! route = "/hello/..."          # or routes = ["/a", "/b/..."]
//!
//! [service.hello.limits]
//! memory = "128MiB"
//! timeout = "30s"
//!
//! [service.hello.build]
//! command = "cargo build --release"
//! workdir = "hello"
//!
//! [service.mailer]
//! component = "mailer.wasm"
//! publish = ["emails.>"]             # topics it may publish on
//!
//! [[service.mailer.subscriptions]]
//! topic = "users.signed-up"
//!
//! [[service.mailer.schedules]]
//! name = "digest"
//! cron = "0 8 * * mon"
//! ```
//!
//! Every table refuses unknown fields, and every error names the file, the
//! line and column, and the field (see [`Diagnostic`]). `docs/manifest.md`
//! documents every field and its default.

use crate::values::capabilities::{
    EnvValue, FileMount, OutboundRule, validate_env, validate_nesting,
};
use crate::values::event::Subscription;
use crate::values::gateway::{AuthConfig, CorsConfig, RateLimit};
use crate::values::limits::Limits;
use crate::values::reuse::Reuse;
use crate::values::route::{Route, RouteTable};
use crate::values::schedule::Schedule;
use crate::values::service::{
    ServiceConfig, ServiceName, ServiceSpec, check_schedule, check_subscription,
};
use crate::values::topic::TopicPattern;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// A manifest that parsed and passed validation.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file, as it was named.
    pub path: PathBuf,
    /// The directory that relative paths in the manifest start from.
    pub dir: PathBuf,
    /// The services, in the order the manifest lists them.
    pub services: Vec<ServiceEntry>,
    source: Arc<Source>,
}

/// One `[service.NAME]` table.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// Name, routes and limits.
    pub spec: ServiceSpec,
    /// The component file, resolved against the manifest's directory, or
    /// an `oci://` reference (see [`ServiceEntry::oci`]).
    pub component: PathBuf,
    /// How to build the component, if the manifest says.
    pub build: Option<BuildSpec>,
    /// The OCI reference of an `oci://` component.
    oci: Option<String>,
    component_span: Range<usize>,
}

/// How a component in an OCI registry is named in a manifest:
/// `oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:DIGEST`.
pub const OCI_SCHEME: &str = "oci://";

impl ServiceEntry {
    /// The OCI reference of its component (without `oci://`), if it is
    /// pulled from a registry rather than read from a file.
    pub fn oci(&self) -> Option<&str> {
        self.oci.as_deref()
    }
}

/// Parses an OCI reference (`oci://` optional). Its registry must be
/// named: `team/hello:v1` is not quietly Docker Hub's.
pub fn oci_reference(text: &str) -> Result<oci_client::Reference, String> {
    let text = text.strip_prefix(OCI_SCHEME).unwrap_or(text);
    let invalid = |why: String| {
        format!(
            "{text:?} is not an OCI reference (REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST): {why}"
        )
    };
    let reference: oci_client::Reference = text.parse().map_err(|e| invalid(format!("{e}")))?;
    let named = text.split('/').next().unwrap_or("");
    let is_host = named.contains('.') || named.contains(':') || named == "localhost";
    if !text.contains('/') || !is_host || !named.eq_ignore_ascii_case(reference.registry()) {
        return Err(invalid(
            "name its registry first (registry.example/team/hello:v1)".into(),
        ));
    }
    Ok(reference)
}

/// A command that builds a service's component (`berth up --build`).
///
/// ```toml
/// [service.hello.build]
/// command = "cargo build --release"   # run with `sh -c`
/// workdir = "hello"                   # relative to the manifest; default: its directory
/// watch = ["src/**/*.rs", "Cargo.toml"] # what `berth up --watch` watches
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// The shell command.
    pub command: String,
    /// Where to run it, relative to the manifest's directory.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// The sources `berth up --watch` rebuilds on: glob patterns relative
    /// to the workdir. Empty: every file below it, but for hidden files
    /// and folders, `target`, `node_modules` and the component itself.
    #[serde(default)]
    pub watch: Vec<String>,
}

impl BuildSpec {
    /// Where the command runs, for a manifest in `dir`.
    pub fn dir(&self, dir: &Path) -> PathBuf {
        match &self.workdir {
            Some(w) => dir.join(w),
            None => dir.to_path_buf(),
        }
    }

    /// The `watch` patterns as one matcher of paths relative to the
    /// workdir, or why one is not a pattern.
    pub fn watch_set(&self) -> Result<globset::GlobSet, String> {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in &self.watch {
            let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
            let leaves = Path::new(pattern)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if leaves {
                return Err(format!(
                    "{pattern:?}: a pattern is relative to the build's workdir and stays below it \
                     (set `workdir` higher to watch more)"
                ));
            }
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("{pattern:?} is not a glob pattern: {e}"))?;
            set.add(glob);
        }
        set.build().map_err(|e| e.to_string())
    }
}

/// The manifest file's text, kept to point errors at lines.
#[derive(Debug)]
struct Source {
    name: String,
    text: String,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid manifest.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

/// An error at a place in the manifest: `file:line:column: field: message`,
/// followed by the offending line with the span underlined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The manifest file, as it was named.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The dotted path of the field, such as `service.hello.route`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    source_line: String,
    underline: usize,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.field, self.message
            )?;
        }
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        write!(
            f,
            "\n{pad} |\n{number} | {}\n{pad} | {}{}",
            self.source_line,
            " ".repeat(self.column - 1),
            "^".repeat(self.underline.max(1))
        )
    }
}

impl Source {
    fn diagnostic(&self, span: Range<usize>, field: &str, message: String) -> ManifestError {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let underline = self.text[start..end].chars().count();
        ManifestError::Invalid(Box::new(Diagnostic {
            file: self.name.clone(),
            line,
            column,
            field: field.to_owned(),
            message,
            source_line: self.text[line_start..line_end].trim_end().to_owned(),
            underline,
        }))
    }
}

impl Source {
    /// Validates one `[service.NAME]` table; `claimed` holds the routes of
    /// the services before it.
    fn service(
        &self,
        dir: &Path,
        name: ServiceName,
        svc: Spanned<RawService>,
        claimed: &mut RouteTable<ServiceName>,
    ) -> Result<ServiceEntry, ManifestError> {
        let table_span = svc.span();
        let svc = svc.into_inner();
        let field = |f: &str| format!("service.{name}.{f}");
        let (routes, routes_field) = self.routes(&name, svc.route, svc.routes)?;
        if routes.is_empty() && svc.subscriptions.is_empty() && svc.schedules.is_empty() {
            return Err(self.diagnostic(
                table_span,
                &format!("service.{name}"),
                "a service needs a trigger: `route`, `routes`, `subscriptions` or `schedules`"
                    .into(),
            ));
        }
        for (i, sub) in svc.subscriptions.iter().enumerate() {
            let before: Vec<Subscription> = svc.subscriptions[..i]
                .iter()
                .map(|s| s.get_ref().clone())
                .collect();
            if let Err(e) = check_subscription(sub.get_ref(), &before) {
                let at = format!("service.{name}.subscriptions[{i}]");
                return Err(self.diagnostic(sub.span(), &at, e.to_string()));
            }
        }
        for (i, schedule) in svc.schedules.iter().enumerate() {
            let before: Vec<Schedule> = svc.schedules[..i]
                .iter()
                .map(|s| s.get_ref().clone())
                .collect();
            if let Err(e) = check_schedule(schedule.get_ref(), &before) {
                let at = format!("service.{name}.schedules[{i}]");
                return Err(self.diagnostic(schedule.span(), &at, e.to_string()));
            }
        }
        self.claim(&name, &routes, &field(routes_field), claimed)?;
        let svc_routes_empty = routes.is_empty();
        let files = self.files(&name, dir, svc.files, table_span)?;
        let env = self.env(&name, svc.env)?;
        if svc.component.get_ref().trim().is_empty() {
            return Err(self.diagnostic(
                svc.component.span(),
                &field("component"),
                "the component path is empty".into(),
            ));
        }
        let build = match svc.build {
            Some(build) => {
                let span = build.span();
                let build = build.into_inner();
                if let Err(e) = build.watch_set() {
                    return Err(self.diagnostic(span, &field("build.watch"), e));
                }
                Some(build)
            }
            None => None,
        };
        let component_span = svc.component.span();
        let component = svc.component.into_inner();
        let (component, oci) = match component.strip_prefix(OCI_SCHEME) {
            // An artifact in a registry: checked as a reference now,
            // pulled when the component is read.
            Some(reference) => {
                if let Err(e) = oci_reference(reference) {
                    return Err(self.diagnostic(component_span, &field("component"), e));
                }
                if build.is_some() {
                    return Err(self.diagnostic(
                        component_span,
                        &field("component"),
                        "a component pulled from a registry is not built here: drop `build`, or name a file".into(),
                    ));
                }
                (PathBuf::from(&component), Some(reference.to_owned()))
            }
            None => (dir.join(component), None),
        };
        let edge = [
            ("auth", svc.auth.as_ref().map(Spanned::span)),
            ("rate_limit", svc.rate_limit.as_ref().map(Spanned::span)),
            ("cors", svc.cors.as_ref().map(Spanned::span)),
        ];
        for (part, span) in edge {
            if let Some(span) = span
                && svc_routes_empty
            {
                return Err(self.diagnostic(
                    span,
                    &field(part),
                    "it applies to HTTP routes, and the service has none".into(),
                ));
            }
        }
        if let Some(limit) = &svc.rate_limit
            && let Err(problem) = limit.get_ref().validate()
        {
            return Err(self.diagnostic(limit.span(), &field("rate_limit"), problem));
        }
        if let Some(cors) = &svc.cors
            && let Err(problem) = cors.get_ref().validate()
        {
            return Err(self.diagnostic(cors.span(), &field("cors"), problem));
        }
        let auth = self.auth(&name, dir, svc.auth)?;
        let rate_limit = svc.rate_limit.map(Spanned::into_inner);
        let cors = svc.cors.map(Spanned::into_inner);
        Ok(ServiceEntry {
            spec: ServiceSpec {
                name,
                config: ServiceConfig {
                    routes: routes.into_iter().map(Spanned::into_inner).collect(),
                    limits: svc.limits,
                    subscriptions: svc
                        .subscriptions
                        .into_iter()
                        .map(Spanned::into_inner)
                        .collect(),
                    publish: svc.publish,
                    schedules: svc.schedules.into_iter().map(Spanned::into_inner).collect(),
                    files,
                    env,
                    allowed_outbound: svc.allowed_outbound,
                    auth,
                    rate_limit,
                    cors,
                    reuse: svc.reuse,
                },
            },
            component,
            build,
            oci,
            component_span,
        })
    }

    /// A service's routes from `route` or `routes`, and which of the two
    /// fields held them.
    fn routes(
        &self,
        name: &ServiceName,
        route: Option<Spanned<Route>>,
        routes: Option<Spanned<Vec<Spanned<Route>>>>,
    ) -> Result<(Vec<Spanned<Route>>, &'static str), ManifestError> {
        match (route, routes) {
            (Some(route), None) => Ok((vec![route], "route")),
            (None, Some(routes)) if routes.get_ref().is_empty() => Err(self.diagnostic(
                routes.span(),
                &format!("service.{name}.routes"),
                "at least one route is required (or leave `routes` out)".into(),
            )),
            (None, Some(routes)) => Ok((routes.into_inner(), "routes")),
            (Some(route), Some(_)) => Err(self.diagnostic(
                route.span(),
                &format!("service.{name}.route"),
                "set either `route` or `routes`, not both".into(),
            )),
            (None, None) => Ok((Vec::new(), "route")),
        }
    }

    /// Claims `routes` for service `name`, refusing one already claimed.
    fn claim(
        &self,
        name: &ServiceName,
        routes: &[Spanned<Route>],
        field: &str,
        claimed: &mut RouteTable<ServiceName>,
    ) -> Result<(), ManifestError> {
        for route in routes {
            if let Err(owner) = claimed.insert(route.get_ref().clone(), name.clone()) {
                let message = if owner == name {
                    format!("route {:?} is listed twice", route.get_ref().as_str())
                } else {
                    format!(
                        "route {:?} is already claimed by service `{owner}`",
                        route.get_ref().as_str()
                    )
                };
                return Err(self.diagnostic(route.span(), field, message));
            }
        }
        Ok(())
    }

    /// A service's mounts, resolved against the manifest's directory.
    fn files(
        &self,
        name: &ServiceName,
        dir: &Path,
        mounts: Vec<Spanned<FileMount>>,
        table_span: Range<usize>,
    ) -> Result<Vec<FileMount>, ManifestError> {
        let mut files = Vec::with_capacity(mounts.len());
        for (i, mount) in mounts.into_iter().enumerate() {
            let span = mount.span();
            let mut mount = mount.into_inner();
            let problem = match mount.resolve(Some(dir)) {
                Err(e) => Some(e.to_string()),
                Ok(()) => files
                    .iter()
                    .any(|m: &FileMount| m.guest == mount.guest)
                    .then(|| format!("guest path {} is mounted twice", mount.guest)),
            };
            if let Some(message) = problem {
                let at = format!("service.{name}.files[{i}]");
                return Err(self.diagnostic(span, &at, message));
            }
            files.push(mount);
        }
        if let Err(e) = validate_nesting(&files) {
            let at = format!("service.{name}.files");
            return Err(self.diagnostic(table_span, &at, e.to_string()));
        }
        Ok(files)
    }

    /// A service's `auth` table, its JWKS file read (relative to the
    /// manifest).
    fn auth(
        &self,
        name: &ServiceName,
        dir: &Path,
        auth: Option<Spanned<AuthConfig>>,
    ) -> Result<Option<AuthConfig>, ManifestError> {
        let Some(auth) = auth else {
            return Ok(None);
        };
        let span = auth.span();
        let mut auth = auth.into_inner();
        if let Some(jwks) = auth.jwt.as_mut().and_then(|jwt| jwt.jwks.as_mut())
            && let Err(problem) = jwks.load(dir)
        {
            let at = format!("service.{name}.auth.jwt.jwks");
            return Err(self.diagnostic(span, &at, problem));
        }
        if let Err(problem) = auth.validate() {
            return Err(self.diagnostic(span, &format!("service.{name}.auth"), problem));
        }
        Ok(Some(auth))
    }

    /// A service's environment.
    fn env(
        &self,
        name: &ServiceName,
        env: Option<Spanned<BTreeMap<String, EnvValue>>>,
    ) -> Result<BTreeMap<String, EnvValue>, ManifestError> {
        let Some(env) = env else {
            return Ok(BTreeMap::new());
        };
        let span = env.span();
        let env = env.into_inner();
        if let Err(e) = validate_env(&env) {
            let at = format!("service.{name}.env");
            return Err(self.diagnostic(span, &at, e.to_string()));
        }
        Ok(env)
    }
}

/// The manifest as written, before cross-field validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    service: BTreeMap<ServiceName, Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    component: Spanned<String>,
    #[serde(default)]
    route: Option<Spanned<Route>>,
    #[serde(default)]
    routes: Option<Spanned<Vec<Spanned<Route>>>>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    subscriptions: Vec<Spanned<Subscription>>,
    #[serde(default)]
    publish: Vec<TopicPattern>,
    #[serde(default)]
    schedules: Vec<Spanned<Schedule>>,
    #[serde(default)]
    files: Vec<Spanned<FileMount>>,
    #[serde(default)]
    env: Option<Spanned<BTreeMap<String, EnvValue>>>,
    #[serde(default)]
    allowed_outbound: Vec<OutboundRule>,
    #[serde(default)]
    auth: Option<Spanned<AuthConfig>>,
    #[serde(default)]
    rate_limit: Option<Spanned<RateLimit>>,
    #[serde(default)]
    cors: Option<Spanned<CorsConfig>>,
    #[serde(default)]
    reuse: Option<Reuse>,
    #[serde(default)]
    build: Option<Spanned<BuildSpec>>,
}

impl Manifest {
    /// Reads and validates the manifest at `path`. Component files are not
    /// checked here (they may not be built yet): see
    /// [`Manifest::check_components`].
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Manifest::parse(path, text)
    }

    /// Validates manifest text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: String) -> Result<Manifest, ManifestError> {
        let source = Arc::new(Source {
            name: path.display().to_string(),
            text,
        });
        let raw = parse_raw(&source)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();

        if raw.service.is_empty() {
            return Err(source.diagnostic(
                0..0,
                "service",
                "the manifest defines no services: add a [service.NAME] table".into(),
            ));
        }

        // Validate in document order, so that of two conflicting services
        // the one written second is the one blamed.
        let mut tables: Vec<_> = raw.service.into_iter().collect();
        tables.sort_by_key(|(_, svc)| svc.span().start);

        let mut claimed: RouteTable<ServiceName> = RouteTable::new();
        let services = tables
            .into_iter()
            .map(|(name, svc)| source.service(&dir, name, svc, &mut claimed))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest {
            path: path.to_path_buf(),
            dir,
            services,
            source,
        })
    }

    /// Checks that every component file exists, naming the manifest line of
    /// the first that does not.
    pub fn check_components(&self) -> Result<(), ManifestError> {
        for svc in &self.services {
            if svc.oci().is_none() && !svc.component.is_file() {
                return Err(self.source.diagnostic(
                    svc.component_span.clone(),
                    &format!("service.{}.component", svc.spec.name),
                    format!(
                        "component file {} does not exist{}",
                        svc.component.display(),
                        if svc.build.is_some() {
                            " (run `berth up --build` to build it)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// An error pointing at a service's `component` field, for problems
    /// found in the component itself.
    pub fn component_error(&self, svc: &ServiceEntry, message: String) -> ManifestError {
        self.source.diagnostic(
            svc.component_span.clone(),
            &format!("service.{}.component", svc.spec.name),
            message,
        )
    }
}

fn parse_raw(source: &Source) -> Result<RawManifest, ManifestError> {
    let de = toml::de::Deserializer::parse(&source.text).map_err(|e| {
        source.diagnostic(
            e.span().unwrap_or(0..0),
            "",
            format!("invalid TOML: {}", e.message().trim_end()),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` shows up in the path as a private marker; drop it.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
            .replace("$__serde_spanned_private_value", "");
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner();
        source.diagnostic(
            inner.span().unwrap_or(0..0),
            &field,
            inner.message().trim_end().to_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::units::ByteSize;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(Path::new("dir/berth.toml"), text.to_owned()).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_service_gets_defaults() {
        let m =
            parse("[service.hello]\ncomponent = \"hello.wasm\"\nroute = \"/hello/...\"\n").unwrap();
        assert_eq!(m.services.len(), 1);
        let s = &m.services[0];
        assert_eq!(s.spec.name.as_str(), "hello");
        assert_eq!(s.component, Path::new("dir/hello.wasm"));
        assert_eq!(
            s.spec.config.routes,
            vec![Route::parse("/hello/...").unwrap()]
        );
        assert_eq!(s.spec.config.limits, Limits::default());
        assert!(s.build.is_none());
    }

    #[test]
    fn oci_components_are_references_with_a_registry_and_no_build() {
        let m = parse(
            "[service.hello]\ncomponent = \"oci://registry.example:5000/team/hello:v1\"\nroute = \"/h\"\n",
        )
        .unwrap();
        assert_eq!(
            m.services[0].oci(),
            Some("registry.example:5000/team/hello:v1")
        );
        // No file to check.
        m.check_components().unwrap();
        let implicit =
            parse("[service.hello]\ncomponent = \"oci://team/hello:v1\"\nroute = \"/h\"\n")
                .unwrap_err();
        assert!(
            implicit.contains("service.hello.component") && implicit.contains("name its registry"),
            "{implicit}"
        );
        let built = parse(
            "[service.hello]\ncomponent = \"oci://registry.example/hello:v1\"\nroute = \"/h\"\n[service.hello.build]\ncommand = \"make\"\n",
        )
        .unwrap_err();
        assert!(built.contains("not built here"), "{built}");
        // A local file whose path merely looks like one is a file.
        let m = parse("[service.hello]\ncomponent = \"oci.wasm\"\nroute = \"/h\"\n").unwrap();
        assert_eq!(m.services[0].oci(), None);
    }

    #[test]
    fn full_service() {
        let m = parse(
            r#"
[service.api]
component = "api.wasm"
routes = ["/api/...", "/health"]
[service.api.limits]
memory = "64MiB"
concurrency = 4
[service.api.build]
command = "make"
workdir = "api"
"#,
        )
        .unwrap();
        let s = &m.services[0];
        assert_eq!(s.spec.config.routes.len(), 2);
        assert_eq!(s.spec.config.limits.memory, ByteSize::mib(64));
        assert_eq!(s.spec.config.limits.concurrency, 4);
        assert_eq!(
            s.build.as_ref().unwrap().workdir.as_deref(),
            Some(Path::new("api"))
        );
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let err =
            parse("[service.hello]\ncomponent = \"h.wasm\"\nroute = \"hello\"\n").unwrap_err();
        assert!(
            err.starts_with("dir/berth.toml:3:9: service.hello.route: invalid route \"hello\""),
            "{err}"
        );
        assert!(err.contains("3 | route = \"hello\""), "{err}");

        let err = parse("[service.a]\ncomponent = \"a\"\nroute = \"/x\"\n[service.b]\ncomponent = \"b\"\nroute = \"/x\"\n").unwrap_err();
        assert!(err.starts_with("dir/berth.toml:6:9: service.b.route: route \"/x\" is already claimed by service `a`"), "{err}");

        let err = parse(
            "[service.a]\ncomponent = \"a\"\nroute = \"/x\"\n[service.a.limits]\nmemroy = 1\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("dir/berth.toml:5:1: service.a.limits.memroy: unknown field `memroy`"),
            "{err}"
        );

        let err = parse("[service.Bad]\ncomponent = \"a\"\nroute = \"/x\"\n").unwrap_err();
        assert!(err.contains("invalid service name \"Bad\""), "{err}");

        let err = parse("[service.a]\ncomponent = \"a\"\n").unwrap_err();
        assert!(
            err.contains("service.a: a service needs a trigger"),
            "{err}"
        );

        let err = parse("").unwrap_err();
        assert!(err.contains("defines no services"), "{err}");
    }
}
