//! The `scheduler` worker: see `tracking_workers::scheduler`.

use std::process::ExitCode;
use tracking_workers::{boot, scheduler};

#[tokio::main]
async fn main() -> ExitCode {
    boot::main("scheduler", |shutdown| async move {
        scheduler::run(scheduler::Settings::from_env()?, shutdown).await
    })
    .await
}
