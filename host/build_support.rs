//! Shared by the build scripts of `berth` (`host/build.rs`) and of the test
//! fixtures (`tests/programs/build.rs`): where the source of a crate the
//! workspace locks is on disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder of the crate `name` as the workspace of the `Cargo.toml` at
/// `manifest` locks it (cargo has every dependency on disk by the time a
/// build script runs, so this works offline).
pub fn crate_dir(manifest: &Path, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = std::env::var("HOST").expect("HOST is set for build scripts");
    let output = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            // Only this platform's packages are on disk.
            "--filter-platform",
        ])
        .arg(host)
        .arg("--manifest-path")
        .arg(manifest)
        .output()
        .unwrap_or_else(|e| panic!("running cargo metadata: {e}"));
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let found = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("{name} is not in cargo metadata"));
    PathBuf::from(found)
        .parent()
        .expect("the crate's folder")
        .to_path_buf()
}
