//! `tocsin`: see the crate documentation.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = tocsin_cli::Cli::parse();
    let mut stdout = std::io::stdout();
    match tocsin_cli::run(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(tocsin_cli::exit_code(&error))
        }
    }
}
