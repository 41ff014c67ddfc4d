//! Start-up: everything wrong with a manifest or a component is reported
//! before berth listens, with the file, line, column and field; and the
//! compiled-code cache makes a second start cheap and survives corruption.

use crate::support::*;
use std::path::Path;

/// Every `invalid/*.toml` is refused with exactly the text of its `.err`
/// file (run with `BLESS=1` to rewrite them after a deliberate change).
#[test]
fn invalid_manifests_match_their_golden_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/invalid");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        cases += 1;
        let name = path.file_name().unwrap().to_str().unwrap();
        let failed = up_fails(&dir, name);
        assert!(!failed.status.success(), "{name} was accepted");
        let expected_path = path.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &failed.stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!("{} is missing (run with BLESS=1)", expected_path.display())
        });
        if failed.stderr != expected {
            failures.push(format!(
                "{name}:\n--- expected ---\n{expected}--- actual ---\n{}",
                failed.stderr
            ));
        }
    }
    assert!(
        cases >= 10,
        "only {cases} golden cases found in {}",
        dir.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn refused(dir: &Path, component: &Path) -> String {
    let manifest = service("bad", component.to_str().unwrap(), "/bad", "");
    std::fs::write(dir.join("berth.toml"), manifest).unwrap();
    let failed = up_fails(dir, "berth.toml");
    assert!(!failed.status.success());
    failed.stderr
}

#[test]
fn files_that_are_not_components_are_refused_naming_the_file() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let hello = std::fs::read(programs::HELLO).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage.wasm",
            b"this is not wasm at all".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        (
            "truncated.wasm",
            hello[..hello.len() / 3].to_vec(),
            "invalid component",
        ),
        ("empty.wasm", Vec::new(), "truncated"),
    ];
    for (file, bytes, why) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let stderr = refused(dir.path(), &path);
        assert!(stderr.contains(why), "{file}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{file}: {stderr}"
        );
        assert!(
            stderr.contains("berth.toml:2:13: service.bad.component"),
            "{file}: {stderr}"
        );
    }
}

#[test]
fn a_component_without_the_http_export_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stderr = refused(dir.path(), Path::new(programs::CLI_APP));
    assert!(
        stderr.contains("does not export `wasi:http/incoming-handler@0.2.x`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wasi:cli/run"),
        "names what it exports instead: {stderr}"
    );
}

#[test]
fn a_component_with_an_unknown_import_is_refused_naming_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stderr = refused(dir.path(), Path::new(programs::BAD_IMPORT));
    assert!(
        stderr.contains(
            "imports instance `acme:inventory/stock@1.0.0`, which Berth does not provide"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn second_start_loads_from_the_code_cache_and_corruption_is_rebuilt() {
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cache_arg = cache.path().to_str().unwrap().to_owned();
    let manifest = service("hello", programs::HELLO, "/hello", "");
    let start = || Berth::up_with(manifest_dir(&manifest), &["--cache-dir", &cache_arg]);

    let first = start();
    first.wait_for_logs(&["service=hello", "code=compiled"]);
    assert_eq!(get(&first, "/hello").await.status, 200);
    drop(first);

    let second = start();
    second.wait_for_logs(&["service=hello", "code=cache hit"]);
    assert_eq!(get(&second, "/hello").await.status, 200);
    drop(second);

    // Corrupt the entry: flip bytes in the middle of the compiled code.
    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a .cwasm entry");
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&entry, &bytes).unwrap();

    let third = start();
    third.wait_for_logs(&["service=hello", "recompiled (checksum mismatch"]);
    let reply = get(&third, "/hello").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from berth: /hello\n");
    drop(third);

    let fourth = start();
    fourth.wait_for_logs(&["service=hello", "code=cache hit"]);
}
