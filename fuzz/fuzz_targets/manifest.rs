//! The manifest parser and validator: any text gets a manifest or a
//! diagnostic that names the file and a line of it.
#![no_main]
use berth::values::manifest::{Manifest, ManifestError};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A folder that does not exist: relative paths (JWKS files) read
    // nothing.
    let path = Path::new("/nonexistent-berth-fuzz/berth.toml");
    match Manifest::parse(path, text.to_owned()) {
        Ok(manifest) => {
            let _ = manifest.check_components();
        }
        Err(ManifestError::Invalid(d)) => {
            assert_eq!(d.file, path.display().to_string());
            let lines = text.split('\n').count();
            assert!(
                d.line >= 1 && d.line <= lines,
                "line {} of {lines}: {d}",
                d.line
            );
            let _ = d.to_string();
        }
        Err(e) => panic!("parsing text gave a read error: {e}"),
    }
});
