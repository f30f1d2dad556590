//! Trace export: when an OTLP endpoint is configured, Sluice's spans (publishes, store
//! commits, invocations) go to it over OTLP/HTTP, protobuf by default or JSON, from the
//! OpenTelemetry SDK's batch processor. Off by default.
//!
//! The batch processor exports from its own thread, so the HTTP client here is a small
//! blocking HTTP/1.1 client over `std::net` (plain `http://`, the usual way to reach a
//! local collector or agent), not an async one that would need a runtime on that thread.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Most bytes of a collector's answer read.
const RESPONSE_MAX: usize = 1 << 20;

#[derive(Debug)]
struct BlockingHttp {
    timeout: Duration,
}

#[async_trait]
impl HttpClient for BlockingHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri().clone();
        if uri.scheme_str() != Some("http") {
            return Err(format!("{uri}: only http:// OTLP endpoints are supported").into());
        }
        let host = uri.host().ok_or("the OTLP endpoint has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or("the OTLP endpoint's host has no address")?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
            request.method(),
            request.body().len()
        );
        for (k, v) in request.headers() {
            if k != "host" && k != "content-length" && k != "connection" {
                head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(request.body())?;
        let (status, body) = read_response(&mut stream)?;
        Ok(Response::builder().status(status).body(body)?)
    }
}

/// Reads an HTTP/1.1 answer: its status, then its body up to its `content-length` (a
/// collector that keeps the connection open is not waited on), or to the end of the
/// connection when it has none.
fn read_response(stream: &mut impl Read) -> Result<(u16, Bytes), HttpError> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut more = |raw: &mut Vec<u8>| -> Result<bool, HttpError> {
        if raw.len() > RESPONSE_MAX {
            return Err("the OTLP endpoint's answer is too large".into());
        }
        let n = stream.read(&mut chunk)?;
        raw.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if !more(&mut raw)? {
            return Err("the OTLP endpoint closed the connection mid-answer".into());
        }
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the OTLP endpoint's answer has no HTTP status")?;
    let length: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let start = end + 4;
    match length {
        Some(n) => {
            while raw.len() < start + n {
                if !more(&mut raw)? {
                    return Err("the OTLP endpoint closed the connection mid-answer".into());
                }
            }
            Ok((status, Bytes::copy_from_slice(&raw[start..start + n])))
        }
        None => {
            while more(&mut raw)? {}
            Ok((status, Bytes::copy_from_slice(&raw[start..])))
        }
    }
}

/// The tracer provider exporting to `endpoint` (the collector's base URL, e.g.
/// `http://127.0.0.1:4318`; spans go to `{endpoint}/v1/traces`).
pub fn provider(endpoint: &str, json: bool) -> anyhow::Result<SdkTracerProvider> {
    if !endpoint.starts_with("http://") {
        bail!("--otlp-endpoint {endpoint:?}: give an http:// URL, e.g. http://127.0.0.1:4318");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttp {
            timeout: Duration::from_secs(10),
        })
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_protocol(if json {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        })
        .build()
        .context("building the OTLP exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("sluice").build())
        .build())
}

/// The `tracing` layer that records Sluice's trace spans (target `sluice_trace`) into
/// `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S> + 'static
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sluice"))
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target() == sluice_server::TRACE_TARGET
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_to_their_length_or_to_the_end() {
        // (bytes the collector sends, status, body)
        let cases: [(&[u8], u16, &[u8]); 4] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}and more",
                200,
                b"{}",
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, b""),
            (
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\nbad",
                400,
                b"bad",
            ),
            (b"HTTP/1.1 503 Unavailable\r\n\r\n", 503, b""),
        ];
        for (raw, status, body) in cases {
            let (s, b) = read_response(&mut &raw[..]).unwrap();
            assert_eq!(
                (s, &b[..]),
                (status, body),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}"[..],
            b"HTTP/1.1 20",
        ] {
            assert!(
                read_response(&mut &raw[..]).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
