//! A stand-in server started in-process, and the read-back side of its control API: what
//! tests and load tests use to see what "the provider" received.

use std::collections::BTreeMap;

use crate::{Config, Provider, ProviderStats, Recorded, StartError};

/// A running stand-in on a loopback port. Dropping it does not stop the server task; the
/// test's runtime does.
#[derive(Debug)]
pub struct Running {
    /// `http://127.0.0.1:PORT`: the base URL providers are configured with.
    pub base: String,
    pub http: reqwest::Client,
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
        let (addr, task) = crate::spawn(config).await?;
        Ok(Running {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _task: task,
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

    /// A provider's counters.
    pub async fn stats(&self, api: Provider) -> Result<ProviderStats, ClientError> {
        let all: BTreeMap<Provider, ProviderStats> = self
            .http
            .get(format!("{}/_standin/stats", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(all.get(&api).cloned().unwrap_or_default())
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
