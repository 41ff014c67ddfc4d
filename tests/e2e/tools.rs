//! The real clients the edge tests use — curl, openssl, h2load (Debian's
//! `nghttp2-client`), PyJWT, Playwright with Debian's Chromium — and the
//! OTLP receiver's Python packages, installed once, pinned, when missing, so
//! that `cargo test --workspace` runs on a fresh machine as `.ci/run`
//! does.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The PyJWT the JWT tests mint tokens with.
pub const PYJWT: &str = "PyJWT[crypto]==2.15.1";

fn works(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `h2load`, installed from Debian's packages if missing.
pub fn h2load() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if !works("h2load", &["--version"]) {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q", "nghttp2-client"])
                .status();
        }
    });
    "h2load"
}

/// Python with PyJWT, installed from PyPI if missing.
pub fn python_jwt() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if !works("python3", &["-c", "import jwt, cryptography"]) {
            let _ = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", PYJWT])
                .status();
        }
    });
    "python3"
}

/// What the test OTLP receiver decodes with: the official protobuf
/// definitions, and gRPC.
pub const OTLP_PYTHON: [&str; 3] = [
    "opentelemetry-proto==1.45.2",
    "protobuf==7.36.2",
    "grpcio==1.85.3",
];

/// Python with the OTLP receiver's packages, installed from PyPI if
/// missing.
pub fn python_otlp() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if !works(
            "python3",
            &["-c", "import grpc, opentelemetry.proto.collector.trace.v1"],
        ) {
            let _ = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(OTLP_PYTHON)
                .status();
        }
    });
    "python3"
}

/// The Playwright that drives the console tests' browser.
pub const PLAYWRIGHT: &str = "playwright==1.65.2";

/// Debian's Chromium, which Playwright drives (none is downloaded).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Python with Playwright, and Debian's Chromium, installed if missing.
pub fn python_browser() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if !Path::new(CHROMIUM).exists() {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "chromium"])
                .status();
        }
        if !works("python3", &["-c", "import playwright.sync_api"]) {
            let _ = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", PLAYWRIGHT])
                .status();
        }
    });
    "python3"
}

/// The other OCI client the registry tests cross-check with: ORAS's
/// Python client.
pub const ORAS: &str = "oras==0.2.43";

/// Debian's `docker-registry` (distribution 2.8) and `htpasswd`
/// (`apache2-utils`), installed if missing.
pub fn registry_tools() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let ready =
            || works("docker-registry", &["--version"]) && works("htpasswd", &["-nbB", "a", "b"]);
        if !ready() {
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(["docker-registry", "apache2-utils"])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !install() {
                let _ = Command::new("apt-get").args(["update", "-q"]).status();
                install();
            }
            assert!(
                ready(),
                "docker-registry and htpasswd could not be installed (apt-get install docker-registry apache2-utils)"
            );
        }
    });
}

/// Python with ORAS's client, installed from PyPI if missing.
pub fn python_oras() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if !works("python3", &["-c", "import oras.client"]) {
            let _ = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", ORAS])
                .status();
        }
    });
    "python3"
}

/// Runs `cmd` with `args`; panics with its output if it cannot start.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"))
}

/// Runs `cmd` and expects success; returns stdout.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test CA and server certificates it signs, made by `openssl`.
pub struct Pki {
    pub ca: String,
    dir: std::path::PathBuf,
}

impl Pki {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> Pki {
        let ca_key = dir.join("ca.key");
        let ca = dir.join("ca.pem");
        run_ok(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Berth Test CA",
                "-keyout",
                ca_key.to_str().unwrap(),
                "-out",
                ca.to_str().unwrap(),
            ],
        );
        Pki {
            ca: ca.to_str().unwrap().to_owned(),
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for `name` (and `*.name`) signed by the CA, written
    /// as `FILE.pem` and `FILE.key`; returns their paths and its serial.
    pub fn issue(&self, name: &str, file: &str) -> (String, String, String) {
        let key = self.dir.join(format!("{file}.key"));
        let csr = self.dir.join(format!("{file}.csr"));
        let cert = self.dir.join(format!("{file}.pem"));
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{name},DNS:*.{name}\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        run_ok(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                csr.to_str().unwrap(),
            ],
        );
        run_ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                &self.ca,
                "-CAkey",
                self.dir.join("ca.key").to_str().unwrap(),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        let serial = run_ok(
            "openssl",
            &["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"],
        );
        (
            cert.to_str().unwrap().to_owned(),
            key.to_str().unwrap().to_owned(),
            serial.trim().trim_start_matches("serial=").to_owned(),
        )
    }
}

/// The serial of the certificate a TLS server at `port` presents for SNI
/// name `name`.
pub fn served_serial(port: u16, name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial -subject"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
