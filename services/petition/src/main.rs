//! `duijie-petition`: see the crate's library for its API and rules.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    duijie_agency::service::main("petition", duijie_petition::KIND, duijie_petition::routes).await
}
