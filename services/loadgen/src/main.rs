//! `tocsin-loadgen`: see the crate documentation.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not glibc's malloc: see `mimalloc` in the workspace's Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = tocsin_loadgen::Cli::parse();
    match tocsin_loadgen::run(cli, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
