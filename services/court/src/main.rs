//! `duijie-court`: see the crate's library for its API and rules.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    duijie_agency::service::main("court", duijie_court::KIND, duijie_court::routes).await
}
