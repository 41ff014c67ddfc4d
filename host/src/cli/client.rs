//! A client of the admin API, for the CLI: HTTP/1.1 (over TLS for an
//! `https://` address, verified against `--ca` or the system's roots),
//! bearer token, JSON in and out, and an upload that reports its
//! progress.

use crate::control::admin::api::{ArtifactView, ErrorBody};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

/// Why a request to the admin API failed.
#[derive(Debug)]
pub enum ClientError {
    /// The host could not be reached.
    Connect(String),
    /// The API answered with an error.
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The stable error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The answer could not be understood.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "{e}"),
            ClientError::Api { code, message, .. } => write!(f, "{message} ({code})"),
            ClientError::Protocol(e) => write!(f, "unexpected answer from the admin API: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The API's error code, if the API answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A connection target: the admin API of one host.
#[derive(Clone)]
pub struct Client {
    authority: String,
    token: Option<String>,
    /// For an `https://` address: how to verify the host.
    tls: Option<tokio_rustls::TlsConnector>,
    /// `http` or `https`, for messages.
    scheme: &'static str,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// An admin API address the client cannot use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid admin URL {url:?}: {why}")]
pub struct InvalidUrl {
    /// The address given.
    pub url: String,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &format!("{}://{}", self.scheme, self.authority))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Client {
    /// A client for the admin API at `url` (`http://HOST:PORT`, or
    /// `https://HOST:PORT` verified against the system's roots).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, InvalidUrl> {
        Client::with_ca(url, token, None)
    }

    /// A client for the admin API at `url`; an `https://` host is verified
    /// against the CA certificates (PEM) in `ca`, or the system's roots.
    pub fn with_ca(
        url: &str,
        token: Option<String>,
        ca: Option<&std::path::Path>,
    ) -> Result<Client, InvalidUrl> {
        let bad = |why: String| InvalidUrl {
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        let (scheme, tls) = match uri.scheme_str() {
            Some("http") | None => ("http", None),
            Some("https") => ("https", Some(connector(ca).map_err(bad)?)),
            Some(other) => {
                return Err(bad(format!(
                    "scheme {other} is not supported (use http:// or https://)"
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host".into()))?
            .to_string();
        Ok(Client {
            authority,
            token: token.filter(|t| !t.is_empty()),
            tls,
            scheme,
        })
    }

    /// Whether requests carry a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The same client with `token`.
    pub fn with_token(self, token: String) -> Client {
        Client {
            token: Some(token).filter(|t| !t.is_empty()),
            ..self
        }
    }

    /// `HOST:PORT` of the admin API.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.send_with(method, path, body, content_type, &[]).await
    }

    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
        headers: &[(String, String)],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let response = self.open(method, path, body, content_type, headers).await?;
        let status = response.status();
        Ok((status, whole(response).await?))
    }

    /// `GET path`, its 2xx answer's body as it comes (a stream of lines).
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let response = self
            .open(Method::GET, path, body, "text/plain", &[])
            .await?;
        Ok(response.into_body())
    }

    /// Sends a request; a 2xx answer's head and body, any other an error.
    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
        headers: &[(String, String)],
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Connect(format!(
                "cannot reach the admin API at {}://{}: {e}",
                self.scheme, self.authority
            ))
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let mut sender = match &self.tls {
            None => handshake(TokioIo::new(stream)).await?,
            Some(tls) => {
                let host = self
                    .authority
                    .rsplit_once(':')
                    .map_or(self.authority.as_str(), |(h, _)| h);
                let name = rustls_pki_types::ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                )
                .map_err(|e| unreachable(&e))?;
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| unreachable(&e))?;
                handshake(TokioIo::new(stream)).await?
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, content_type);
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = sender.send_request(req).await.map_err(|e| {
            ClientError::Connect(format!(
                "the admin API at {}://{} closed the connection: {e}",
                self.scheme, self.authority
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = whole(response).await?;
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api {
                status,
                code: e.error.code,
                message: e.error.message,
            }),
            Err(_) => Err(ClientError::Api {
                status,
                code: status.as_u16().to_string(),
                message: String::from_utf8_lossy(&bytes).trim().to_owned(),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, T), ClientError> {
        let body = Full::new(Bytes::from(body.unwrap_or_default()))
            .map_err(|never| match never {})
            .boxed();
        let (status, bytes) = self.send(method, path, body, "application/json").await?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((status, value))
    }

    /// `GET path` as text (a 2xx answer; any other is an error).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let (_, bytes) = self.send(Method::GET, path, body, "text/plain").await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.json(Method::GET, path, None).await?.1)
    }

    /// `PUT`/`POST` JSON, reading JSON back.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        value: &impl Serialize,
    ) -> Result<(StatusCode, T), ClientError> {
        let body = serde_json::to_vec(value).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.json(method, path, Some(body)).await
    }

    /// `DELETE path`, reading JSON back (or nothing, for 204).
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ClientError> {
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let (status, bytes) = self
            .send(Method::DELETE, path, body, "application/json")
            .await?;
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST path` with `body` and extra headers, reading JSON back.
    pub async fn post_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
        content_type: &str,
        headers: &[(String, String)],
    ) -> Result<T, ClientError> {
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        let (_, bytes) = self
            .send_with(Method::POST, path, body, content_type, headers)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Uploads a component, calling `progress(sent, total)` as the bytes go
    /// out. Returns the artifact and whether it was new.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        mut progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<(ArtifactView, bool), ClientError> {
        const CHUNK: usize = 256 * 1024;
        let total = bytes.len() as u64;
        let bytes = Bytes::from(bytes);
        // A one-chunk channel: a chunk is reported sent once the connection
        // has taken the one before it.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            let mut sent = 0u64;
            for start in (0..bytes.len()).step_by(CHUNK) {
                let chunk = bytes.slice(start..(start + CHUNK).min(bytes.len()));
                sent += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    return;
                }
                progress(sent, total);
            }
        });
        let body = ChannelBody { rx, len: total }.boxed();
        let (status, reply) = self
            .send(Method::POST, "/v1/artifacts", body, "application/wasm")
            .await?;
        let view =
            serde_json::from_slice(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((view, status == StatusCode::CREATED))
    }
}

/// Starts HTTP/1.1 on a connected stream.
/// A response's whole body.
async fn whole(response: http::Response<hyper::body::Incoming>) -> Result<Bytes, ClientError> {
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .to_bytes())
}

async fn handshake<I>(io: I) -> Result<hyper::client::conn::http1::SendRequest<Body>, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A TLS connector trusting the CA certificates in `ca`, or the system's.
fn connector(ca: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no PEM certificate", path.display()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// A request body fed by a channel, of a known length (so it is sent with
/// a `Content-Length` and an oversized upload is refused up front).
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    len: u64,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}
