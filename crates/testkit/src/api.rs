//! A JSON client for a Sluice server's API, for tests: calls with status and parsed body,
//! 2xx assertions, deploys and invocations, and a check that every error is problem+json.

use std::time::Duration;

use serde_json::Value;

/// The API of one server.
#[derive(Clone)]
pub struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    /// A client of the server at `url` (e.g. `http://127.0.0.1:41234`).
    pub fn new(url: &str) -> Api {
        Api {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HTTP client, for requests the helpers below do not make (streams, headers).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Calls the API with an optional JSON body; returns the status and the parsed body
    /// (a JSON string holding the raw text when the body is not JSON).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the server");
        Self::read(resp).await
    }

    /// Calls the API and asserts a 2xx answer; returns its body.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Deploys the component `wasm` as a new version of function `name` with the deploy
    /// query `query` (e.g. `memory=128MiB&env=K%3DV`); asserts it was created.
    pub async fn deploy(&self, name: &str, wasm: Vec<u8>, query: &str) -> Value {
        let path = format!("/v1/functions/{name}/versions?{query}");
        let (status, v) = self
            .call_with("POST", &path, &[("content-type", "application/wasm")], wasm)
            .await;
        assert_eq!(status, 201, "deploy {name}: {v}");
        v
    }

    /// Sends raw bytes as `application/json`.
    pub async fn call_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.call_with(method, path, &[("content-type", "application/json")], body)
            .await
    }

    /// Sends raw bytes with the given headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .expect("request reaches the server");
        Self::read(resp).await
    }

    async fn read(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let problem = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/problem+json");
        let text = resp.text().await.expect("response body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            assert!(problem, "error answers are problem+json: {status} {value}");
        }
        (status, value)
    }

    /// Publishes `events` to `topic` as one CloudEvents batch; asserts it was taken and
    /// returns the answer (each event's outcome).
    pub async fn publish(&self, topic: &str, events: &[Value]) -> Value {
        self.publish_as(
            topic,
            "application/cloudevents-batch+json",
            serde_json::to_vec(events).expect("JSON"),
        )
        .await
    }

    /// Publishes one structured-mode CloudEvent to `topic`; asserts it was taken.
    pub async fn publish_event(&self, topic: &str, event: &Value) -> Value {
        self.publish_as(
            topic,
            "application/cloudevents+json",
            serde_json::to_vec(event).expect("JSON"),
        )
        .await
    }

    async fn publish_as(&self, topic: &str, content_type: &str, body: Vec<u8>) -> Value {
        let (status, v) = self
            .call_with(
                "POST",
                &format!("/v1/topics/{topic}/events"),
                &[("content-type", content_type)],
                body,
            )
            .await;
        assert_eq!(status, 200, "publish to {topic}: {v}");
        v
    }

    /// Invokes function `name` synchronously with one event carrying `data`; asserts the
    /// call was answered (whatever the invocation's outcome) and returns the result.
    pub async fn invoke(&self, name: &str, data: Value) -> Value {
        self.ok(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(serde_json::json!({ "data": data })),
        )
        .await
    }
}
