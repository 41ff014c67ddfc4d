//! OCI manifests as `berth pull` (and a manifest's `oci://` component)
//! reads them, from a registry on loopback that answers with the fuzzed
//! manifest, config and layer: a pull succeeds only with the layer's own
//! bytes under their own digest; anything else is a clear error.
#![no_main]
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::sync::{Mutex, OnceLock};

const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/json",
];

/// What the registry serves now: head byte, manifest, config, layer.
static SERVED: Mutex<(u8, Vec<u8>, Vec<u8>, Vec<u8>)> =
    Mutex::new((0, Vec::new(), Vec::new(), Vec::new()));

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn registry(request: Request<Body>) -> Response<Body> {
    let (head, manifest, config, layer) = SERVED.lock().unwrap().clone();
    let path = request.uri().path();
    let response = Response::builder();
    if path.contains("/manifests/") {
        let mut response = response.header(
            "content-type",
            MANIFEST_TYPES[head as usize % MANIFEST_TYPES.len()],
        );
        match head / 4 % 3 {
            0 => response = response.header("docker-content-digest", sha256(&manifest)),
            1 => response = response.header("docker-content-digest", sha256(b"another")),
            _ => {}
        }
        return response.body(Body::from(manifest)).unwrap();
    }
    if let Some((_, digest)) = path.split_once("/blobs/") {
        let blob = if digest == sha256(&config) {
            config
        } else {
            layer
        };
        return response.body(Body::from(blob)).unwrap();
    }
    response.status(StatusCode::OK).body(Body::empty()).unwrap()
}

fn address() -> &'static str {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS.get_or_init(|| {
        let runtime = berth_fuzz::runtime();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap().to_string();
        runtime.spawn(async move {
            axum::serve(listener, axum::Router::new().fallback(registry))
                .await
                .unwrap();
        });
        address
    })
}

fuzz_target!(|data: &[u8]| {
    let [head, manifest, config, layer] = berth_fuzz::parts(data, 4)[..] else {
        unreachable!()
    };
    let head = head.first().copied().unwrap_or(0);
    *SERVED.lock().unwrap() = (head, manifest.to_vec(), config.to_vec(), layer.to_vec());
    let reference = format!("{}/fuzz/component:latest", address());
    let pulled = berth_fuzz::runtime().block_on(berth::cli::fuzzing::pull(&reference));
    match pulled {
        Ok(pulled) => {
            assert_eq!(
                pulled.bytes, layer,
                "a pull gave bytes that are not the layer's"
            );
            assert_eq!(pulled.layer, sha256(layer));
        }
        Err(e) => {
            let message = format!("{e:#}");
            assert!(message.contains(&reference), "{message}");
        }
    }
});
