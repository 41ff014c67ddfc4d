//! Components in OCI registries: `berth push FILE REF`, `berth pull REF`,
//! and `component = "oci://REF"` in manifests and `berth deploy`.
//!
//! The artifact is the layout the Wasm ecosystem uses (the CNCF TAG
//! Runtime's Wasm OCI artifact, as `oci-wasm`, wasm-pkg-tools and
//! `wkg` write it): an image manifest whose config is
//! `application/vnd.wasm.config.v0+json` (the component's imports and
//! exports) and whose one layer is the component, `application/wasm`.
//! The protocol is `oci-client`'s (basic auth, or a bearer token, or the
//! registry's token service after a 401 challenge).
//!
//! - **Credentials** come from `BERTH_REGISTRY_USERNAME` and
//!   `BERTH_REGISTRY_PASSWORD` (basic, and what a token service is asked
//!   with) or `BERTH_REGISTRY_TOKEN` (a bearer token), and go only to the
//!   registry `BERTH_REGISTRY_HOST` names; others: anonymous.
//! - **Plain HTTP** is used for a registry on a loopback address
//!   (`localhost`, `127.0.0.0/8`), as Docker does, and for those
//!   named in `BERTH_INSECURE_REGISTRIES` (comma-separated `host:port`);
//!   any other is HTTPS, verified against the system's roots.
//! - **Digests are verified**: the layer's bytes against the manifest's
//!   layer digest (and the config's `layerDigests`), and the manifest
//!   against the reference's `@sha256:` when it names one. A layer past
//!   [`MAX_COMPONENT`] is refused before it is fetched; a pull or a push
//!   ends after 5 minutes whatever the registry does.

use anyhow::{Context, anyhow, bail};
use clap::Args;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_wasm::{WasmClient, WasmConfig};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

pub use crate::values::manifest::OCI_SCHEME;

/// Arguments of `berth push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The component to push (a `.wasm` file).
    file: PathBuf,
    /// Where: `REGISTRY/REPOSITORY:TAG` (an `oci://` prefix is allowed).
    reference: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `berth pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// What: `REGISTRY/REPOSITORY:TAG` or `…@sha256:DIGEST` (an `oci://`
    /// prefix is allowed).
    reference: String,
    /// Where to write the component (default: `REPOSITORY.wasm` here,
    /// the last part of the repository's name).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A component pulled from a registry.
#[derive(Debug)]
pub struct Pulled {
    /// Its bytes (their digest verified).
    pub bytes: Vec<u8>,
    /// The manifest's digest.
    pub manifest: String,
    /// The layer's digest: `sha256:` of the bytes.
    pub layer: String,
}

/// Largest component pulled (as the host's default `--max-upload`).
pub const MAX_COMPONENT: u64 = 128 << 20;

/// Longest a pull or a push may take, whatever the registry does.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// Parses a reference, with or without `oci://`; its registry must be
/// named (no implicit Docker Hub).
pub fn reference(text: &str) -> anyhow::Result<Reference> {
    crate::values::manifest::oci_reference(text).map_err(|e| anyhow!(e))
}

/// The credentials the environment gives for `registry`: only the one
/// `BERTH_REGISTRY_HOST` names gets them (a manifest from elsewhere never
/// sends them to its own registry).
fn auth(registry: &str) -> anyhow::Result<RegistryAuth> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let token = var("BERTH_REGISTRY_TOKEN");
    let basic = match (
        var("BERTH_REGISTRY_USERNAME"),
        var("BERTH_REGISTRY_PASSWORD"),
    ) {
        (Some(user), Some(password)) => Some((user, password)),
        _ => None,
    };
    if token.is_none() && basic.is_none() {
        return Ok(RegistryAuth::Anonymous);
    }
    let Some(host) = var("BERTH_REGISTRY_HOST") else {
        bail!(
            "registry credentials are set: set BERTH_REGISTRY_HOST to the registry (host[:port]) they are for"
        );
    };
    if !host.eq_ignore_ascii_case(registry) {
        return Ok(RegistryAuth::Anonymous);
    }
    Ok(match (token, basic) {
        (Some(token), _) => RegistryAuth::Bearer(token),
        (None, Some((user, password))) => RegistryAuth::Basic(user, password),
        (None, None) => RegistryAuth::Anonymous,
    })
}

/// Whether `registry` (`host[:port]`) is reached over plain HTTP.
fn insecure(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || std::env::var("BERTH_INSECURE_REGISTRIES").is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|r| !r.is_empty() && r.eq_ignore_ascii_case(registry))
        })
}

/// A client for `reference`'s registry.
fn client(reference: &Reference) -> anyhow::Result<WasmClient> {
    // reqwest's rustls is built without a provider: Berth's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry().to_owned();
    let protocol = if insecure(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    let client = Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        // An image index is no Wasm artifact: refused, not resolved to
        // this machine's platform.
        platform_resolver: None,
        ..ClientConfig::default()
    })
    .map_err(|e| anyhow!("making the registry client: {e}"))?;
    Ok(WasmClient::new(client))
}

/// `sha256:` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

const CREDENTIALS: &str = " (the registry refused the credentials: set BERTH_REGISTRY_HOST with BERTH_REGISTRY_USERNAME and BERTH_REGISTRY_PASSWORD, or BERTH_REGISTRY_TOKEN)";
const NOT_WASM: &str = " (not a Wasm component artifact: Berth takes one application/wasm layer with an application/vnd.wasm.config.v0+json config)";

/// What a registry's error means, said plainly.
fn explain(e: anyhow::Error, what: &str, reference: &Reference) -> anyhow::Error {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let hint = match e.downcast_ref::<E>() {
        Some(E::UnauthorizedError { .. } | E::AuthenticationFailure(_)) => CREDENTIALS,
        Some(E::RegistryError { envelope, .. }) => match envelope.errors.first().map(|e| &e.code) {
            Some(C::Unauthorized) => {
                " (the registry refused the credentials: set BERTH_REGISTRY_HOST with BERTH_REGISTRY_USERNAME and BERTH_REGISTRY_PASSWORD, or BERTH_REGISTRY_TOKEN)"
            }
            Some(C::Denied) => " (the registry denied this: the credentials do not allow it)",
            Some(C::ManifestUnknown | C::NameUnknown) => " (no such repository or tag)",
            _ => "",
        },
        Some(E::ImageManifestNotFoundError(_)) => " (no such repository or tag)",
        Some(E::ServerError { code: 404, .. }) => " (no such repository or tag)",
        Some(E::ServerError { code: 401, .. }) => CREDENTIALS,
        Some(E::ServerError { code: 403, .. }) => {
            " (the registry denied this: the credentials do not allow it)"
        }
        Some(
            E::IncompatibleLayerMediaTypeError(_)
            | E::UnsupportedMediaTypeError(_)
            | E::ImageIndexParsingNoPlatformResolverError,
        ) => {
            " (not a Wasm component artifact: Berth takes one application/wasm layer with an application/vnd.wasm.config.v0+json config)"
        }
        Some(E::RequestError(r)) if r.is_connect() || r.is_timeout() => {
            " (the registry cannot be reached)"
        }
        // oci-wasm's own checks of the layout.
        None if format!("{e}").starts_with("Wasm components must") => NOT_WASM,
        _ => "",
    };
    anyhow!("{what} {OCI_SCHEME}{reference}: {e:#}{hint}")
}

/// Pulls the component `reference` names, verifying its digests.
pub async fn pull(reference_text: &str) -> anyhow::Result<Pulled> {
    let reference = reference(reference_text)?;
    tokio::time::timeout(DEADLINE, pull_from(&reference))
        .await
        .map_err(|_| {
            anyhow!(
                "pulling {OCI_SCHEME}{reference}: the registry took more than {}s",
                DEADLINE.as_secs()
            )
        })?
}

async fn pull_from(reference: &Reference) -> anyhow::Result<Pulled> {
    use futures_util::StreamExt;
    let client = client(reference)?;
    let auth = auth(reference.resolve_registry())?;
    // The manifest first (its digest checked against an @sha256:
    // reference by the client), one layer of application/wasm with a Wasm
    // config (checked by oci-wasm), and its size.
    let (manifest, config, manifest_digest) = client
        .pull_manifest_and_config(reference, &auth)
        .await
        .map_err(|e| explain(e, "pulling", reference))?;
    let layer = &manifest.layers[0];
    if layer.media_type != oci_wasm::WASM_LAYER_MEDIA_TYPE {
        bail!(
            "{OCI_SCHEME}{reference} is not a Wasm component artifact: its layer is {}",
            layer.media_type
        );
    }
    if layer.size < 0 || layer.size as u64 > MAX_COMPONENT {
        bail!(
            "{OCI_SCHEME}{reference}: the component is {} bytes, more than the {MAX_COMPONENT} taken",
            layer.size
        );
    }
    if !config.layer_digests.is_empty() && !config.layer_digests.contains(&layer.digest) {
        bail!(
            "{OCI_SCHEME}{reference}: its layer {} is not among its config's layer digests",
            layer.digest
        );
    }
    // Then the layer, streamed, its digest verified by the client as it
    // ends, never more than its declared size.
    let mut stream = client
        .pull_blob_stream(reference, layer)
        .await
        .map_err(|e| explain(e.into(), "pulling", reference))?;
    let mut bytes = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow!("pulling {OCI_SCHEME}{reference}: {e}"))?;
        if (bytes.len() + chunk.len()) as u64 > layer.size as u64 {
            bail!(
                "{OCI_SCHEME}{reference}: the registry sent more than the component's declared {} bytes",
                layer.size
            );
        }
        bytes.extend_from_slice(&chunk);
    }
    let layer_digest = sha256(&bytes);
    if layer.digest.starts_with("sha256:") && layer_digest != layer.digest {
        bail!(
            "{OCI_SCHEME}{reference}: the component's digest is {layer_digest}, but its manifest says {}",
            layer.digest
        );
    }
    Ok(Pulled {
        bytes,
        manifest: manifest_digest,
        layer: layer_digest,
    })
}

/// Pushes the component `bytes` as `reference`; the manifest's digest.
pub async fn push(bytes: Vec<u8>, reference_text: &str) -> anyhow::Result<String> {
    let reference = reference(reference_text)?;
    if reference.digest().is_some() {
        bail!("push to a tag (REGISTRY/REPOSITORY:TAG): the registry names the digest");
    }
    let (config, layer) = WasmConfig::from_raw_component(bytes, None)
        .map_err(|e| anyhow!("not a WebAssembly component: {e:#}"))?;
    let client = client(&reference)?;
    let auth = auth(reference.resolve_registry())?;
    let pushing = async {
        client
            .push(&reference, &auth, layer, config, None)
            .await
            .map_err(|e| explain(e, "pushing to", &reference))?;
        client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .map_err(|e| explain(e.into(), "reading back", &reference))
    };
    tokio::time::timeout(DEADLINE, pushing).await.map_err(|_| {
        anyhow!(
            "pushing to {OCI_SCHEME}{reference}: the registry took more than {}s",
            DEADLINE.as_secs()
        )
    })?
}

/// The bytes of a component: a file's, or pulled for an `oci://` one.
pub async fn component_bytes(component: &Path, oci: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match oci {
        Some(reference) => Ok(pull(reference).await?.bytes),
        None => {
            std::fs::read(component).with_context(|| format!("reading {}", component.display()))
        }
    }
}

/// The bytes of every service's component in `manifest`, each pulled or
/// read before any is deployed (a registry that fails changes nothing);
/// an error names the service's `component` line.
pub async fn manifest_components(
    manifest: &crate::values::manifest::Manifest,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut all = Vec::with_capacity(manifest.services.len());
    for entry in &manifest.services {
        let bytes = component_bytes(&entry.component, entry.oci())
            .await
            .map_err(|e| manifest.component_error(entry, format!("{e:#}")))?;
        all.push(bytes);
    }
    Ok(all)
}

/// `berth push FILE REF`.
pub async fn run_push(args: PushArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let layer = sha256(&bytes);
    let reference = reference(&args.reference)?;
    let manifest = push(bytes, &args.reference).await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"reference": reference.whole(), "manifest": manifest, "component": layer})
        );
    } else {
        println!(
            "pushed {} as {OCI_SCHEME}{}",
            args.file.display(),
            reference.whole()
        );
        println!("manifest {manifest}");
        println!("component {layer}");
        println!(
            "pin it: {OCI_SCHEME}{}/{}@{manifest}",
            reference.resolve_registry(),
            reference.repository()
        );
    }
    Ok(())
}

/// `berth pull REF`.
pub async fn run_pull(args: PullArgs) -> anyhow::Result<()> {
    let reference = reference(&args.reference)?;
    let pulled = pull(&args.reference).await?;
    let output = match args.output {
        Some(path) => path,
        None => {
            let name = reference
                .repository()
                .rsplit('/')
                .next()
                .unwrap_or("component");
            PathBuf::from(format!("{name}.wasm"))
        }
    };
    write_whole(&output, &pulled.bytes)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"reference": reference.whole(), "manifest": pulled.manifest, "component": pulled.layer, "file": output, "size": pulled.bytes.len()})
        );
    } else {
        println!(
            "pulled {OCI_SCHEME}{} to {} ({} bytes)",
            reference.whole(),
            output.display(),
            pulled.bytes.len()
        );
        println!("manifest {}", pulled.manifest);
        println!("component {}", pulled.layer);
    }
    Ok(())
}

/// Writes `bytes` to `path` whole or not at all: a new file beside it,
/// synced, then renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let partial = path.with_file_name(format!(
        ".{}.{}.part",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        anyhow!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(insecure("127.0.0.1:5000"));
        assert!(insecure("localhost:5000"));
        assert!(!insecure("ghcr.io"));
        assert!(!insecure("registry.example:5000"));
        assert!(!insecure("127.0.0.1.evil.example:5000"));
        assert!(!insecure("localhost.evil.example"));
    }

    #[test]
    fn references_with_or_without_the_scheme() {
        let r = reference("oci://127.0.0.1:5000/team/hello:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/hello");
        assert_eq!(r.tag(), Some("v1"));
        assert!(reference("127.0.0.1:5000/hello@sha256:nothex").is_err());
        assert!(reference("UPPER/Case:tag").is_err());
        // No implicit Docker Hub: the registry is named.
        assert!(reference("team/hello:v1").is_err());
        assert!(reference("hello:v1").is_err());
        assert!(reference("docker.io/team/hello:v1").is_ok());
        assert!(reference("localhost/hello:v1").is_ok());
    }
}
