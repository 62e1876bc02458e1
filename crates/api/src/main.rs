//! The `tracking-api` binary: see `tracking_api`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracking_app::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("page-link") {
        return page_links(&args[1..]);
    }
    tracking_runtime::boot::main("tracking-api", |shutdown| async move {
        tracking_api::run(tracking_api::Settings::from_env()?, shutdown).await
    })
    .await
}

/// `tracking-api page-link ORDER_ID...`: prints each order's tracking page address.
fn page_links(order_ids: &[String]) -> ExitCode {
    match tracking_api::page_links(order_ids) {
        Ok(links) => {
            for link in links {
                println!("{link}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tracking-api page-link: {e}");
            ExitCode::from(2)
        }
    }
}
