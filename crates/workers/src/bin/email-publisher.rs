//! The `email-publisher` worker: see `tracking_workers::email_publisher`.

use std::process::ExitCode;
use tracking_workers::{boot, email_publisher};

#[tokio::main]
async fn main() -> ExitCode {
    boot::main("email-publisher", |shutdown| async move {
        email_publisher::run(email_publisher::Settings::from_env()?, shutdown).await
    })
    .await
}
