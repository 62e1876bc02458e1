//! The `fetcher` worker: see `tracking_workers::fetcher`.

use std::process::ExitCode;
use tracking_workers::{boot, fetcher};

#[tokio::main]
async fn main() -> ExitCode {
    boot::main("fetcher", |shutdown| async move {
        fetcher::run(fetcher::Settings::from_env()?, shutdown).await
    })
    .await
}
