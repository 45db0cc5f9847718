//! `tocsin-planner`: see the crate documentation.

use anyhow::Context;
use tocsin_planner::Config;
use tocsin_runtime::ConfigLoader;

/// mimalloc, not glibc's malloc: see `mimalloc` in the workspace's Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = ConfigLoader::from_process(Some(tocsin_planner::config::DEFAULTS))
        .load()
        .context("loading configuration")?;
    tocsin_runtime::telemetry::init(&config.log).map_err(anyhow::Error::msg)?;
    tocsin_planner::run(config, tocsin_runtime::shutdown::signal()).await
}
