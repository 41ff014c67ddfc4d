//! Embeds the WIT of the WASI 0.2 interfaces Berth provides (the `wit/deps`
//! of the `wasmtime-wasi-http` crate it links) for `berth new`, whose
//! JavaScript and Python templates build against it.

#[path = "build_support.rs"]
mod build_support;

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_support.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let deps = build_support::crate_dir(&manifest_dir.join("Cargo.toml"), "wasmtime-wasi-http")
        .join("wit/deps");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&deps)
        .unwrap_or_else(|e| panic!("listing {}: {e}", deps.display()))
        .map(|entry| entry.expect("a WIT folder entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "wit"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no WIT in {}", deps.display());
    let mut out = String::from(
        "/// The WIT packages of WASI 0.2 that Berth links (file name, text).\n\
         pub const WASI_P2: &[(&str, &str)] = &[\n",
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("wasi_wit.rs"), out).expect("writing wasi_wit.rs");
}
