//! A small HTTP client for the Sluice API: server address, bearer token, and problem+json
//! errors turned into readable messages.

use anyhow::{Context, bail};
use serde_json::Value;

/// Connection flags shared by every client command.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:7700"
    )]
    pub server: String,
    /// Bearer token, if the server requires one.
    #[arg(long, global = true, env = "SLUICE_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
}

/// How long an upload (a deploy) may take to be answered.
pub const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    pub output: Output,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: args.server.trim_end_matches('/').to_owned(),
            token: args.auth_token.clone(),
            output: args.output,
        })
    }

    /// Calls the API; a problem answer becomes an error carrying its code and detail.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// GETs a resource; `None` when the server answers 404 (it does not exist).
    pub async fn get_optional(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| self.unreachable())?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            bail!(
                "{}: {} (HTTP {})",
                value["code"].as_str().unwrap_or("error"),
                value["detail"].as_str().unwrap_or(""),
                status.as_u16()
            );
        }
        Ok(Some(value))
    }

    fn unreachable(&self) -> String {
        format!(
            "cannot reach the Sluice server at {}; is `sluice serve` running?",
            self.base
        )
    }

    /// Posts raw bytes with a content type. Waits up to [`UPLOAD_TIMEOUT`] for the answer:
    /// a deploy answers once its component is compiled, which for a Python or JavaScript
    /// component takes seconds, and far longer on a busy small machine.
    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<Value> {
        let req = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(UPLOAD_TIMEOUT)
            .body(body);
        self.send(req).await
    }

    /// Opens a long-lived GET (a Server-Sent Events stream): no overall timeout.
    pub async fn open_stream(
        &self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<reqwest::Response> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let mut req = http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.with_context(|| self.unreachable())?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            bail!(
                "{}: {} (HTTP {status})",
                value["code"].as_str().unwrap_or("error"),
                value["detail"].as_str().unwrap_or("")
            );
        }
        Ok(resp)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.with_context(|| self.unreachable())?;
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let code = value["code"].as_str().unwrap_or("error");
            let detail = value["detail"].as_str().unwrap_or("");
            if self.output == Output::Json {
                println!("{value}");
            }
            bail!("{code}: {detail} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
