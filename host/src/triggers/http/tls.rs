//! TLS termination for a listener: rustls (TLS 1.2 and 1.3 only, on
//! `ring`), one or more certificates chosen by SNI, ALPN `h2` and
//! `http/1.1`, and certificates reloaded without a restart.
//!
//! - **Several certificates**: each `--tls-cert`/`--tls-key` pair is one
//!   certificate chain; a client's SNI name picks the first whose
//!   certificate is valid for it (wildcards as X.509 has them); without
//!   SNI, or when none matches, the first pair answers.
//! - **Reload**: the files are looked at every [`RELOAD_POLL`] (and at once
//!   when [`Tls::reload`] is called, which `berth` does on `SIGHUP`); when
//!   any changed, every pair is read again and swapped in as a whole. A
//!   pair that does not load keeps the old certificates in place, and the
//!   error is logged. Connections already open keep the session they
//!   negotiated.
//! - **At start**, a pair that does not load is an error naming the file.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// One certificate: the PEM files of its chain and of its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain (PEM; the server's certificate first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate did not load.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", file.display())]
pub struct CertError {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// A listener's TLS: the acceptor handshakes use, and the certificates
/// behind it.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Certs>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.certs.files)
            .finish()
    }
}

impl Tls {
    /// Loads every pair of `files` (an error names the first file that
    /// does not load) and makes the server configuration: TLS 1.2 and
    /// 1.3, ALPN `h2` then `http/1.1`.
    pub fn load(files: Vec<CertFiles>) -> Result<Tls, CertError> {
        if files.is_empty() {
            return Err(CertError {
                file: PathBuf::from("--tls-cert"),
                why: "no certificate given".into(),
            });
        }
        let (loaded, stamps) = load_all(&files)?;
        let certs = Arc::new(Certs {
            current: ArcSwap::from_pointee(loaded),
            stamps: Mutex::new(stamps),
            files,
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| CertError {
                file: PathBuf::from("--tls-cert"),
                why: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
        })
    }

    /// The acceptor for this listener's handshakes.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again if any changed since they were last read (or
    /// always, with `force`), and swaps the new certificates in. Returns
    /// whether it swapped; a failure keeps the old ones and is logged.
    pub fn reload(&self, force: bool) -> bool {
        self.certs.reload(force)
    }

    /// Checks the files every [`RELOAD_POLL`] until `stop` is cancelled.
    pub async fn watch(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let certs = self.certs.clone();
            // Reading files is blocking work.
            let _ = tokio::task::spawn_blocking(move || certs.reload(false)).await;
        }
    }
}

/// The certificates a listener serves, swapped as a whole on reload.
#[derive(Debug)]
struct Certs {
    files: Vec<CertFiles>,
    current: ArcSwap<Vec<Arc<CertifiedKey>>>,
    /// What the files looked like when last read.
    stamps: Mutex<Vec<Stamp>>,
}

impl Certs {
    fn reload(&self, force: bool) -> bool {
        let Ok(mut stamps) = self.stamps.lock() else {
            return false;
        };
        let now: Vec<Stamp> = self.files.iter().flat_map(stamp_pair).collect();
        if !force && now == *stamps {
            return false;
        }
        match load_all(&self.files) {
            Ok((loaded, read)) => {
                self.current.store(Arc::new(loaded));
                *stamps = read;
                tracing::info!(certificates = self.files.len(), "TLS certificates reloaded");
                true
            }
            Err(e) => {
                // Not again until the files change once more.
                *stamps = now;
                tracing::error!(error = %e, "TLS certificates not reloaded; the old ones stay in use");
                false
            }
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        if let Some(name) = hello.server_name()
            && let Ok(name) = ServerName::try_from(name)
        {
            let found = current.iter().find(|key| {
                key.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            });
            if let Some(key) = found {
                return Some(key.clone());
            }
        }
        current.first().cloned()
    }
}

/// A file's identity and contents' age: a change of any means it was
/// replaced or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp_pair(files: &CertFiles) -> [Stamp; 2] {
    [stamp(&files.cert), stamp(&files.key)]
}

fn stamp(path: &Path) -> Stamp {
    // Metadata through symbolic links: Kubernetes swaps a secret's files
    // by moving the link they point through.
    match std::fs::metadata(path) {
        Ok(meta) => Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: {
                use std::os::unix::fs::MetadataExt;
                meta.ino()
            },
        },
        Err(_) => Stamp {
            modified: None,
            len: 0,
            inode: 0,
        },
    }
}

fn load_all(files: &[CertFiles]) -> Result<(Vec<Arc<CertifiedKey>>, Vec<Stamp>), CertError> {
    let mut loaded = Vec::with_capacity(files.len());
    let mut stamps = Vec::with_capacity(files.len() * 2);
    for pair in files {
        // Stamped before reading: a change during the read is seen next
        // time.
        stamps.extend(stamp_pair(pair));
        loaded.push(Arc::new(load_pair(pair)?));
    }
    Ok((loaded, stamps))
}

/// Loads one certificate chain and its key, checking they belong
/// together.
pub fn load_pair(files: &CertFiles) -> Result<CertifiedKey, CertError> {
    let cert_err = |why: String| CertError {
        file: files.cert.clone(),
        why,
    };
    let key_err = |why: String| CertError {
        file: files.key.clone(),
        why,
    };
    let pem = std::fs::read(&files.cert).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| cert_err(format!("not a valid X.509 certificate: {e}")))?;
    let pem = std::fs::read(&files.key).map_err(|e| key_err(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| key_err(format!("not a PEM private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError {
            file: files.key.clone(),
            why: format!(
                "this key does not belong to the certificate in {}",
                files.cert.display()
            ),
        },
        other => key_err(format!("the key cannot be used: {other}")),
    })?;
    Ok(certified)
}
