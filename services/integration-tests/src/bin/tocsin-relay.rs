//! The relay fixture as a process, for tests that kill it.

use anyhow::Context;
use tocsin_integration_tests::relay::{self, RelayConfig};
use tocsin_runtime::ConfigLoader;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: RelayConfig = ConfigLoader::from_process(Some(relay::DEFAULTS))
        .load()
        .context("loading configuration")?;
    tocsin_runtime::telemetry::init(&config.log).map_err(anyhow::Error::msg)?;
    relay::run(config, tocsin_runtime::shutdown::signal()).await
}
