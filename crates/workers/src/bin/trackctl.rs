//! `trackctl`: see `tracking_workers::ctl`.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = tracking_workers::ctl::Cli::parse();
    if let Err(e) = tracking_runtime::telemetry::init() {
        eprintln!("trackctl: {e}");
        return ExitCode::from(2);
    }
    match tracking_workers::ctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
