//! `trackctl`: see `tracking_workers::ctl`.

use clap::Parser;
use std::process::ExitCode;
use tracking_runtime::settings::SettingsError;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracking_app::install();
    let cli = tracking_workers::ctl::Cli::parse();
    if let Err(e) = tracking_runtime::telemetry::init() {
        eprintln!("trackctl: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = tracking_runtime::settings::check_files() {
        eprintln!("trackctl: bad configuration: {e}");
        return ExitCode::from(2);
    }
    match tracking_workers::ctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // As the workers do: bad configuration (a setting that cannot be read) exits with 2, naming the setting.
        Err(e) if e.downcast_ref::<SettingsError>().is_some() => {
            eprintln!("trackctl: bad configuration: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("trackctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
