//! The `marketplace-publisher` worker: see `tracking_workers::marketplace_publisher`.

use std::process::ExitCode;
use tracking_workers::{boot, marketplace_publisher};

#[tokio::main]
async fn main() -> ExitCode {
    boot::main("marketplace-publisher", |shutdown| async move {
        marketplace_publisher::run(marketplace_publisher::Settings::from_env()?, shutdown).await
    })
    .await
}
