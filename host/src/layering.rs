//! Checks the crate's layering (see the crate docs): every module path a
//! source file names — in `use` items (aliases, groups and globs
//! included), in paths in code, and in macro arguments — is in its own
//! layer or one below, and no import cycle spans more than two files. The
//! source is read as Rust (`syn`), so comments and strings never count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::{self, Visit};

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

/// The paths a file names that start with `crate`, `super` or `self`, as
/// segments (a glob ends with `*`).
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn add(&mut self, segments: Vec<String>) {
        if segments
            .first()
            .is_some_and(|s| s == "crate" || s == "super" || s == "self")
        {
            self.0.push(segments);
        }
    }

    /// Every path of a `use` tree, under `prefix`.
    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &[String]) {
        let with = |name: &syn::Ident| {
            let mut p = prefix.to_vec();
            p.push(name.to_string());
            p
        };
        match tree {
            syn::UseTree::Path(p) => self.use_tree(&p.tree, &with(&p.ident)),
            syn::UseTree::Name(n) => self.add(with(&n.ident)),
            // `use crate::x as y`: what counts is `crate::x`.
            syn::UseTree::Rename(r) => self.add(with(&r.ident)),
            syn::UseTree::Glob(_) => {
                let mut p = prefix.to_vec();
                p.push("*".into());
                self.add(p);
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(tree, prefix);
                }
            }
        }
    }

    /// Paths written inside a macro's arguments: `crate :: a :: b`.
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let tokens: Vec<proc_macro2::TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                proc_macro2::TokenTree::Group(g) => self.tokens(g.stream()),
                proc_macro2::TokenTree::Ident(id) => {
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while let (
                        Some(proc_macro2::TokenTree::Punct(a)),
                        Some(proc_macro2::TokenTree::Punct(b)),
                        Some(proc_macro2::TokenTree::Ident(next)),
                    ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(next.to_string());
                        j += 3;
                    }
                    self.add(segments);
                    i = j - 1;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, &[]);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.add(path.segments.iter().map(|s| s.ident.to_string()).collect());
        visit::visit_path(self, path);
    }

    // `pub(crate)` names no module.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }
}

/// What a path names, resolved from `module`: the module path it reaches
/// (its lower-case segments), or `Err` for a glob of the crate root, which
/// could bring in anything.
fn resolve(module: &[String], segments: &[String]) -> Result<Vec<String>, String> {
    let (mut base, rest) = match segments[0].as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (module.to_vec(), &segments[1..]),
        _ => {
            // `super` of module `a::b` (file `a/b.rs` or `a/b/mod.rs`) is
            // `a`.
            let supers = segments.iter().take_while(|s| *s == "super").count();
            let mut base = module.to_vec();
            base.truncate(base.len().saturating_sub(supers));
            (base, &segments[supers..])
        }
    };
    if base.is_empty() && rest.first().is_none_or(|s| s == "*") {
        return Err(segments.join("::"));
    }
    // Module names are lower case; stop at the first item.
    for segment in rest {
        if segment == "*" || !segment.starts_with(|c: char| c.is_ascii_lowercase()) {
            break;
        }
        base.push(segment.clone());
    }
    Ok(base)
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
    let mut globs = Vec::new();
    for file in all {
        let module = module_of(&file);
        if layer(&module).is_none() {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let ast = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        let mut paths = Paths::default();
        paths.visit_file(&ast);
        let mut targets = BTreeSet::new();
        for segments in &paths.0 {
            match resolve(&module, segments) {
                Ok(m) => targets.extend(file_of(&m).filter(|t| *t != file)),
                Err(glob) => globs.push(format!("{}: {glob}", file.display())),
            }
        }
        graph.insert(file, targets);
    }
    assert!(
        globs.is_empty(),
        "globs of the crate root hide what they import: {globs:#?}"
    );
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
fn the_checker_sees_every_form_of_path() {
    let module: Vec<String> = ["wasm", "instance", "egress"].map(String::from).into();
    let named = |source: &str| -> Vec<Vec<String>> {
        let mut paths = Paths::default();
        paths.visit_file(&syn::parse_file(source).unwrap());
        paths
            .0
            .iter()
            .map(|p| resolve(&module, p).unwrap_or_else(|g| vec![format!("glob {g}")]))
            .collect()
    };
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let found = named(
        r#"
        use super::{CallChain, Tag};
        use crate::{control as c, values::{id::X, topic::*}};
        use
            crate::cli::client::Client;
        // use crate::host::Host;
        const S: &str = "crate::runtime::Runtime";
        const R: &str = r"\";
        fn f() { let _ = crate::triggers::http::x(); tracing::info!("{}", crate::control::ledger::Y); }
        "#,
    );
    for expected in [
        "wasm::instance",
        "control",
        "values::id",
        "values::topic",
        "cli::client",
        "triggers::http::x",
        "control::ledger",
    ] {
        assert!(found.contains(&m(expected)), "{expected} not in {found:?}");
    }
    assert!(!found.contains(&m("host")), "a comment counted: {found:?}");
    assert!(
        !found.contains(&m("runtime")),
        "a string counted: {found:?}"
    );
    assert_eq!(
        named("use crate::*;"),
        vec![vec!["glob crate::*".to_owned()]]
    );
}
