//! A stand-in server started in-process, and the read-back side of its control API: what
//! tests and load tests use to see what "the provider" received.

use std::net::SocketAddr;

use crate::{Config, Provider, ProviderStats, Recorded, SmtpStats, StartError};

/// A running stand-in on a loopback port. Dropping it does not stop the server task; the
/// test's runtime does.
#[derive(Debug)]
pub struct Running {
    /// `http://127.0.0.1:PORT`: the base URL providers are configured with.
    pub base: String,
    pub http: reqwest::Client,
    /// The SMTP sink's address, when the config asked for one (`smtp_listen`).
    pub smtp: Option<SocketAddr>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("control API: {0}")]
    Http(#[from] reqwest::Error),
    #[error("control API refused: {0}")]
    Refused(String),
}

impl Running {
    pub async fn start(config: Config) -> Result<Self, ClientError> {
        let spawned = crate::spawn(config).await?;
        Ok(Running {
            base: format!("http://{}", spawned.addr),
            http: reqwest::Client::new(),
            smtp: spawned.smtp_addr,
            _task: spawned.task,
        })
    }

    /// What a provider accepted, in arrival order (empty when recording is off).
    pub async fn messages(&self, api: Provider) -> Result<Vec<Recorded>, ClientError> {
        Ok(self
            .http
            .get(format!("{}/_standin/messages?provider={api}", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// One entry of `GET /_standin/stats`: a provider's, or `smtp`. Read as loose JSON
    /// so that a key this client does not know never breaks it.
    async fn stats_of<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &str,
    ) -> Result<T, ClientError> {
        let mut all: serde_json::Map<String, serde_json::Value> = self
            .http
            .get(format!("{}/_standin/stats", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        match all.remove(key) {
            Some(entry) => serde_json::from_value(entry)
                .map_err(|e| ClientError::Refused(format!("stats of {key}: {e}"))),
            None => Ok(T::default()),
        }
    }

    /// A provider's counters.
    pub async fn stats(&self, api: Provider) -> Result<ProviderStats, ClientError> {
        self.stats_of(api.as_str()).await
    }

    /// The SMTP sink's counters.
    pub async fn smtp_stats(&self) -> Result<SmtpStats, ClientError> {
        self.stats_of("smtp").await
    }

    /// Forgets messages, counters and seen keys of every stand-in and of the SMTP sink.
    pub async fn reset(&self) -> Result<(), ClientError> {
        self.http
            .post(format!("{}/_standin/reset", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Replaces a provider's faults (fields left out take their defaults).
    pub async fn set_faults(
        &self,
        api: Provider,
        faults: &serde_json::Value,
    ) -> Result<(), ClientError> {
        let response = self
            .http
            .post(format!("{}/_standin/faults/{api}", self.base))
            .json(faults)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(ClientError::Refused(
                response.text().await.unwrap_or_default(),
            ));
        }
        Ok(())
    }
}
