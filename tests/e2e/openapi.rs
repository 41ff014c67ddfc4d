//! The admin API's contract: `docs/openapi.yaml` names exactly the
//! routes the server has, and schemathesis (PyPI), run against a live
//! host, finds no server error, no hang and no answer that does not
//! match the document.

use crate::support::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use syn::visit::Visit;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `(METHOD, /path)` of every operation in the OpenAPI document (paths
/// at two spaces of indent, their operations at four).
fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(repo().join("docs/openapi.yaml")).unwrap();
    let mut ops = BTreeSet::new();
    let mut path = None;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if !line.starts_with("  ") {
            path = None;
        } else if let (Some(path), Some(method)) = (
            &path,
            line.strip_prefix("    ").and_then(|m| m.strip_suffix(':')),
        ) && ["get", "put", "post", "delete", "patch"].contains(&method)
        {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

/// `(METHOD, /path)` of every route of the admin router, read from its
/// source (`router()` in host/src/control/admin/mod.rs) as Rust.
fn routed() -> BTreeSet<(String, String)> {
    #[derive(Default)]
    struct Routes(BTreeSet<(String, String)>);
    #[derive(Default)]
    struct Methods(Vec<String>);
    impl<'a> Visit<'a> for Methods {
        fn visit_expr_call(&mut self, call: &'a syn::ExprCall) {
            if let syn::Expr::Path(p) = &*call.func {
                self.0
                    .push(p.path.segments.last().unwrap().ident.to_string());
            }
            syn::visit::visit_expr_call(self, call);
        }
        fn visit_expr_method_call(&mut self, call: &'a syn::ExprMethodCall) {
            self.0.push(call.method.to_string());
            syn::visit::visit_expr_method_call(self, call);
        }
    }
    impl<'a> Visit<'a> for Routes {
        fn visit_expr_method_call(&mut self, call: &'a syn::ExprMethodCall) {
            if call.method == "route"
                && let Some(syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(path),
                    ..
                })) = call.args.first()
            {
                let mut methods = Methods::default();
                methods.visit_expr(&call.args[1]);
                for m in methods.0 {
                    if ["get", "put", "post", "delete", "patch"].contains(&m.as_str()) {
                        self.0.insert((m.to_uppercase(), path.value()));
                    }
                }
            }
            syn::visit::visit_expr_method_call(self, call);
        }
    }
    let source = std::fs::read_to_string(repo().join("host/src/control/admin/mod.rs")).unwrap();
    let file = syn::parse_file(&source).unwrap();
    let router = file
        .items
        .iter()
        .find_map(|item| match item {
            syn::Item::Fn(f) if f.sig.ident == "router" => Some(f),
            _ => None,
        })
        .expect("fn router in admin/mod.rs");
    let mut routes = Routes::default();
    routes.visit_item_fn(router);
    routes.0
}

#[test]
fn the_openapi_document_names_every_route_of_the_admin_api_and_no_other() {
    let routed = routed();
    assert!(routed.len() >= 20, "too few routes read: {routed:?}");
    let mut documented = documented();
    // Health is answered before the router (no token).
    assert!(documented.remove(&("GET".into(), "/healthz".into())));
    assert!(documented.remove(&("GET".into(), "/readyz".into())));
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes not in docs/openapi.yaml: {missing:?}; documented but not routed: {extra:?}"
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_every_answer_matches_the_document() {
    // A host with a service, an artifact, a key, events and usage, so
    // the answers have something in them; schemathesis may delete and
    // change all of it.
    let manifest = format!(
        "[service.hello]\ncomponent = {:?}\nroute = \"/hello/...\"\n\
         [service.orders]\ncomponent = {:?}\nsubscriptions = [{{ topic = \"orders.*\" }}]\n",
        programs::HELLO,
        programs::EVENTS_CONSUMER,
    );
    let berth = Berth::up_admin(&manifest, &[]);
    let admin = berth.admin.unwrap();
    let _ = get(&berth, "/hello/x").await;
    let out = std::env::temp_dir().join(format!("berth-schemathesis-{}", std::process::id()));
    let st = Command::new("st")
        .arg("run")
        .arg(repo().join("docs/openapi.yaml"))
        .arg("--url")
        .arg(format!("http://{admin}"))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", crate::host::TOKEN),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "25",
            "--request-timeout",
            "20",
            "--workers",
            "1",
            "--seed",
            "17",
            "--continue-on-failure",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&out)
        .env("PYTHONPATH", repo().join("tests/e2e"))
        .env("SCHEMATHESIS_HOOKS", "openapi_hooks")
        .env("NO_COLOR", "1")
        // schemathesis keeps a cache of what failed in its working
        // folder: a temporary one, not the repository.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running schemathesis (`st`, from PyPI: pip install schemathesis==4.32.5)");
    let stdout = String::from_utf8_lossy(&st.stdout);
    let stderr = String::from_utf8_lossy(&st.stderr);
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        st.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\nberth's log:\n{}",
        berth.logs()
    );
    eprintln!("{stdout}");
    // It ran every operation of the document.
    let operations = documented().len();
    assert!(
        stdout.contains(&format!("Selected: {operations}/{operations}"))
            && stdout.contains(&format!("Tested: {operations}\n")),
        "not every operation ran:\n{stdout}"
    );
}
