//! Checks the crate's layering (see the crate docs): every module path a
//! source file names (`use` items and paths in code, not comments) is in
//! its own layer or one below, and no import cycle spans more than two
//! files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first, by top-level module.
const LAYERS: &[&str] = &[
    "values", "wasm", "runtime", "triggers", "control", "host", "cli",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `wasm/instance/mod.rs` → `[wasm, instance]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The file that defines the longest prefix of `module` that is a file.
fn file_of(module: &[String]) -> Option<PathBuf> {
    for len in (1..=module.len()).rev() {
        let base = module[..len].iter().fold(src(), |p, m| p.join(m));
        for candidate in [base.with_extension("rs"), base.join("mod.rs")] {
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// The source without comments (line comments, doc comments, blocks) and
/// string literals' contents.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if text[i..].starts_with("/*") {
            i += text[i..].find("*/").map_or(bytes.len() - i, |e| e + 2);
        } else if bytes[i] == b'"' && (i == 0 || bytes[i - 1] != b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Expands a `use` tree (`a::{b::C, d}`) into paths (`a::b::C`, `a::d`).
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// The module paths (`crate::…` and `super::…`, resolved) `code` names.
fn references(module: &[String], code: &str) -> BTreeSet<Vec<String>> {
    let mut paths = Vec::new();
    for statement in code.split(';') {
        if let Some(at) = statement.find("use ") {
            paths.extend(expand(&statement[at + 4..]));
        }
    }
    // Paths written in code, outside `use`.
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("crate::") || w.starts_with("super::"))
        .collect();
    paths.extend(words.into_iter().map(str::to_owned));
    let mut out = BTreeSet::new();
    for path in paths {
        let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
        let mut base: Vec<String> = match segments.first() {
            Some(&"crate") => {
                segments.remove(0);
                Vec::new()
            }
            Some(&"super") => {
                // `super` of module `a::b` (file `a/b.rs` or `a/b/mod.rs`)
                // is `a`.
                let mut base = module.to_vec();
                while segments.first() == Some(&"super") {
                    segments.remove(0);
                    base.truncate(base.len().saturating_sub(1));
                }
                base
            }
            _ => continue,
        };
        // Module names are lower case; stop at the first item.
        for segment in segments {
            if segment.is_empty() || !segment.starts_with(|c: char| c.is_ascii_lowercase()) {
                break;
            }
            base.push(segment.to_owned());
        }
        if !base.is_empty() {
            out.insert(base);
        }
    }
    out
}

fn layer(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    LAYERS.iter().position(|l| l == top)
}

/// Every file of a layer, with the files it imports.
fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut graph = BTreeMap::new();
    for file in all {
        let module = module_of(&file);
        if layer(&module).is_none() {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let targets = references(&module, &code)
            .into_iter()
            .filter_map(|m| file_of(&m))
            .filter(|t| *t != file)
            .collect();
        graph.insert(file, targets);
    }
    graph
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let mut wrong = Vec::new();
    for (file, targets) in graph() {
        let own = layer(&module_of(&file)).unwrap();
        for target in targets {
            let theirs = layer(&module_of(&target));
            if theirs.is_some_and(|t| t > own) {
                wrong.push(format!(
                    "{} ({}) imports {} ({})",
                    file.display(),
                    LAYERS[own],
                    target.display(),
                    LAYERS[theirs.unwrap()]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_import_cycle_spans_more_than_two_files() {
    let graph = graph();
    // A module's `mod.rs` declares its children; that is not a cycle.
    let is_parent = |a: &Path, b: &Path| {
        a.file_name().is_some_and(|n| n == "mod.rs") && b.starts_with(a.parent().unwrap())
    };
    let edges: BTreeMap<&PathBuf, Vec<&PathBuf>> = graph
        .iter()
        .map(|(f, ts)| (f, ts.iter().filter(|t| !is_parent(f, t)).collect()))
        .collect();
    for component in strongly_connected(&edges) {
        assert!(
            component.len() <= 2,
            "an import cycle through {} files: {:#?}",
            component.len(),
            component
        );
    }
}

/// Tarjan's strongly connected components.
fn strongly_connected<'a>(
    edges: &BTreeMap<&'a PathBuf, Vec<&'a PathBuf>>,
) -> Vec<Vec<&'a PathBuf>> {
    struct State<'a> {
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        out: Vec<Vec<&'a PathBuf>>,
    }
    fn visit<'a>(
        v: &'a PathBuf,
        edges: &BTreeMap<&'a PathBuf, Vec<&'a PathBuf>>,
        s: &mut State<'a>,
    ) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, edges, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(v, edges, &mut s);
        }
    }
    s.out
}

#[test]
fn the_checker_reads_use_trees() {
    assert_eq!(
        expand("crate::values::{a::B, c::{d, E}}"),
        [
            "crate::values::a::B",
            "crate::values::c::d",
            "crate::values::c::E"
        ]
    );
    let module = vec![
        "wasm".to_owned(),
        "instance".to_owned(),
        "egress".to_owned(),
    ];
    let refs = references(
        &module,
        "use super::{CallChain, Tag};\nuse crate::values::id::X;",
    );
    assert!(refs.contains(&vec!["wasm".to_owned(), "instance".to_owned()]));
    assert!(refs.contains(&vec!["values".to_owned(), "id".to_owned()]));
    assert_eq!(code_only("a // crate::cli\n\"crate::cli\" b"), "a \n\"\" b");
}
