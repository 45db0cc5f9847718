//! The API seen from the command line.

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// What went wrong, as the person at the terminal should read it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the API at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API refused: its own message, the field at fault, and for a message the
    /// renderer would not render, the class of the refusal.
    #[error(
        "{message}{}{}",
        field.as_ref().map(|f| format!(" (field: {f})")).unwrap_or_default(),
        class.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
    )]
    Refused {
        status: StatusCode,
        message: String,
        field: Option<String>,
        class: Option<String>,
    },
    #[error("unexpected answer from the API: {0}")]
    Garbled(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Garbled(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Refused {
                status,
                message: value["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {status}")),
                field: value["field"].as_str().map(str::to_owned),
                class: value["class"].as_str().map(str::to_owned),
            })
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }
}
