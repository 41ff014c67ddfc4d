//! Compiles the guest fixtures in `guests/` to `wasm32-wasip2` components and
//! exposes their paths as constants (see `lib.rs`).
//!
//! The guests form their own cargo workspace, built by a nested `cargo` with
//! its own target directory under `OUT_DIR`, so their build neither sees the
//! host's flags nor fights over its target directory.
//!
//! The Python guests in `python/` are built by componentize-py (pinned,
//! installed from PyPI if missing), against the WIT of the
//! `wasmtime-wasi-http` Berth links, so they import what Berth provides.
//!
//! The guests in `wat/` are components in the WebAssembly text format, for
//! what a compiler does not emit (growing a table, a component of
//! thousands of core instances); `instances` is written here.

#[path = "../../host/build_support.rs"]
mod build_support;

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let guests = manifest_dir.join("guests");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_dir = out_dir.join("target");

    println!("cargo:rerun-if-changed={}", guests.display());
    ensure_target_installed();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--workspace")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_OPT_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cargo} to build the guest fixtures: {e}"));
    assert!(
        status.success(),
        "building the guest fixtures failed: {status}"
    );

    let wasm_dir = target_dir.join(TARGET).join("release");
    let mut consts = String::new();
    for entry in std::fs::read_dir(&guests).expect("list guests") {
        let entry = entry.expect("guest dir entry");
        let name = entry.file_name().into_string().expect("utf-8 guest name");
        let is_guest = entry.path().join("Cargo.toml").exists() && name != "util";
        if !is_guest {
            continue;
        }
        let file = if name == "cli-app" {
            format!("{name}.wasm")
        } else {
            format!("{}.wasm", name.replace('-', "_"))
        };
        let path = wasm_dir.join(&file);
        assert!(
            path.exists(),
            "guest {name} was not built: {}",
            path.display()
        );
        let ident = name.replace('-', "_").to_uppercase();
        consts.push_str(&format!(
            "/// Path of the `{name}` guest component.\npub const {ident}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    let python = manifest_dir.join("python");
    println!("cargo:rerun-if-changed={}", python.display());
    for (name, world) in PYTHON_GUESTS {
        let wasm = build_python(&manifest_dir, &python.join(name), world, &out_dir);
        let ident = format!("PY_{}", name.replace('-', "_").to_uppercase());
        consts.push_str(&format!(
            "/// Path of the `{name}` Python guest component.\npub const {ident}: &str = {:?};\n",
            wasm.display().to_string()
        ));
    }
    let wat = manifest_dir.join("wat");
    println!("cargo:rerun-if-changed={}", wat.display());
    let mut texts: Vec<(String, String)> = std::fs::read_dir(&wat)
        .expect("list wat")
        .map(|e| e.expect("wat entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wat"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read wat"))
        })
        .collect();
    texts.push(("instances".into(), many_instances(MANY_INSTANCES)));
    texts.sort();
    for (name, text) in texts {
        let wasm = wat::parse_str(&text).unwrap_or_else(|e| panic!("wat/{name}: {e}"));
        let path = out_dir.join(format!("{name}.wasm"));
        std::fs::write(&path, wasm).expect("write wat guest");
        consts.push_str(&format!(
            "/// Path of the `{name}` guest component (WebAssembly text).\npub const WAT_{}: &str = {:?};\n",
            name.to_uppercase(),
            path.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("programs.rs"), consts).expect("write programs.rs");
}

/// Core instances of `small` in the `instances` guest: about as many as
/// a component may have (the parser's limit is 1,000), each with a memory
/// and a table, against the pool's 8 core instances and 2 memories and
/// tables per instance slot.
const MANY_INSTANCES: usize = 990;

/// `instances`: an HTTP handler whose component instantiates a small
/// module (a table, a memory page) `n` times, then spins until its
/// deadline, to hold as much of the host's instance pool as it can.
fn many_instances(n: usize) -> String {
    let mut text = String::from(
        r#"(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))
  ))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $outparam))
  (core module $small (table 1 funcref) (memory 1))
  (core module $m (func (export "handle") (param i32 i32) (loop $spin (br $spin))))
"#,
    );
    for _ in 0..n {
        text.push_str("  (core instance (instantiate $small))\n");
    }
    text.push_str(
        r#"  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $request)) (param "response-out" (own $outparam))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler))
)
"#,
    );
    text
}

/// The Python guests: their folder under `python/` and the world they
/// target.
const PYTHON_GUESTS: &[(&str, &str)] = &[("service-p3", "wasi:http/service@0.3.0")];

/// The componentize-py the Python guests are built with.
const COMPONENTIZE_PY: &str = "0.25.0";

/// Builds the Python app in `app` (its `app.py`) into a component.
fn build_python(manifest_dir: &Path, app: &Path, world: &str, out_dir: &Path) -> PathBuf {
    let wit = wasi_http_wit(manifest_dir);
    let name = app.file_name().unwrap().to_string_lossy().into_owned();
    let wasm = out_dir.join(format!("py-{name}.wasm"));
    let output = componentize_py()
        .env_remove("RUST_BACKTRACE")
        .arg("-q")
        .arg("-d")
        .arg(&wit)
        .args(["-w", world, "componentize", "-p"])
        .arg(app)
        .arg("app")
        .arg("-o")
        .arg(&wasm)
        .output()
        .unwrap_or_else(|e| panic!("running componentize-py: {e}"));
    assert!(
        output.status.success(),
        "componentize-py could not build {}:\n{}",
        app.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    wasm
}

/// componentize-py at the pinned version: the one on the PATH, or one
/// installed from PyPI into a folder of this build's own and run from it.
fn componentize_py() -> Command {
    let wanted = format!("componentize-py {COMPONENTIZE_PY}");
    let version_of = |mut cmd: Command| {
        cmd.arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if version_of(Command::new("componentize-py")).as_deref() == Some(wanted.as_str()) {
        return Command::new("componentize-py");
    }
    let home = PathBuf::from(env("OUT_DIR")).join("componentize-py");
    let installed = || {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &home).args([
            "-c",
            "import sys; from componentize_py import script; \
             sys.argv[0] = 'componentize-py'; sys.exit(script())",
        ]);
        cmd
    };
    if version_of(installed()).as_deref() != Some(wanted.as_str()) {
        println!("cargo:warning=installing componentize-py {COMPONENTIZE_PY} from PyPI");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(&home)
            .arg(format!("componentize-py=={COMPONENTIZE_PY}"))
            .status()
            .unwrap_or_else(|e| panic!("running pip to install componentize-py: {e}"));
        assert!(
            status.success(),
            "installing componentize-py {COMPONENTIZE_PY} failed"
        );
    }
    installed()
}

/// The WIT of WASI 0.3 HTTP, from the source of the `wasmtime-wasi-http`
/// crate this workspace locks.
fn wasi_http_wit(manifest_dir: &Path) -> PathBuf {
    let wit = build_support::crate_dir(
        &manifest_dir.join("../../host/Cargo.toml"),
        "wasmtime-wasi-http",
    )
    .join("src/p3/wit");
    assert!(wit.is_dir(), "no WIT at {}", wit.display());
    wit
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// A fresh machine may have Rust but not the wasm32-wasip2 standard library:
/// add it through rustup rather than fail with a wall of `can't find crate`.
fn ensure_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(sysroot) = sysroot else { return };
    let libdir = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if libdir.exists() {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .unwrap_or_else(|e| {
            panic!("the {TARGET} target is missing and rustup could not be run ({e}): install it with `rustup target add {TARGET}`")
        });
    assert!(status.success(), "`rustup target add {TARGET}` failed");
}
