//! A small plain-HTTP client for the endpoints tests and the benchmark talk to besides the API
//! server: etcd's JSON gateway, and the operator's `/healthz`, `/readyz` and `/metrics`.
//!
//! Built on hyper-util's client (already compiled for kube's), so that status lines, chunked
//! bodies and keep-alive are handled by a maintained HTTP implementation rather than by string
//! splitting over a raw socket.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::Error;

/// Bound on one request, connection included: every caller polls with its own deadline, and a
/// hung endpoint must show up as a failed poll, not as a poll that never returns.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET url`; returns the status code and the body (lossily decoded as UTF-8). Any status counts
/// as an answer; only transport failures are errors.
pub async fn get(url: &str) -> Result<(u16, String), Error> {
    let request = http::Request::get(url).body(Full::new(Bytes::new()));
    send(url, request).await
}

/// `POST url` with a JSON body; returns the status code and the body.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Result<(u16, String), Error> {
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())));
    send(url, request).await
}

async fn send(
    url: &str,
    request: Result<http::Request<Full<Bytes>>, http::Error>,
) -> Result<(u16, String), Error> {
    let failed = |detail: String| Error::Http {
        url: url.to_owned(),
        detail,
    };
    let request = request.map_err(|e| failed(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(format!("reading the body: {e}")))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {REQUEST_TIMEOUT:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real exchange against a one-shot HTTP/1.1 server: status, body, and the request as sent.
    #[tokio::test]
    async fn posts_json_and_reads_status_and_body() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3/kv/range", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&request).contains("{\"key\":\"AA==\"}") {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let body = "{\"ok\":true}";
            let response = format!(
                "HTTP/1.1 418 I'm a teapot\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let (status, body) = post_json(&url, &serde_json::json!({"key": "AA=="}))
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (418, "{\"ok\":true}"));
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v3/kv/range HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_an_error_naming_the_url() {
        let port = crate::free_port().unwrap();
        let url = format!("http://127.0.0.1:{port}/readyz");
        let err = get(&url).await.unwrap_err().to_string();
        assert!(err.contains(&url), "{err}");
    }
}
