//! `correios-sim`: the Correios API Rastro simulator as a process (see `tracking_sim::correios::run_from_env`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match tracking_sim::correios::run_from_env().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("correios-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
