//! The `tracking-api` binary: see `tracking_api`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracking_runtime::boot::main("tracking-api", |shutdown| async move {
        tracking_api::run(tracking_api::Settings::from_env()?, shutdown).await
    })
    .await
}
