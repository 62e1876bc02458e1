//! The `normalizer` worker: see `tracking_workers::normalizer`.

use std::process::ExitCode;
use tracking_workers::{boot, normalizer};

#[tokio::main]
async fn main() -> ExitCode {
    boot::main("normalizer", |shutdown| async move {
        normalizer::run(normalizer::Settings::from_env()?, shutdown).await
    })
    .await
}
