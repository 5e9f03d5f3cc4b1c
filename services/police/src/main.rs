//! `duijie-police`: see the crate's library for its API and rules.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    duijie_agency::service::main("police", duijie_police::KIND, duijie_police::routes).await
}
