//! `marketplace-receiver`: a signed-webhook receiver that prints every call (see `tracking_sim::marketplace`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(secret) = std::env::var("RECEIVER_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
    else {
        eprintln!(
            "marketplace-receiver: RECEIVER_SECRET is required (the HMAC secret the webhook is signed with)"
        );
        return ExitCode::from(2);
    };
    match tracking_sim::marketplace::run_with_secret(secret).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marketplace-receiver: {e:#}");
            ExitCode::from(2)
        }
    }
}
