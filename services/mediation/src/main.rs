//! `duijie-mediation`: see the crate's library for its API and rules.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    duijie_agency::service::main("mediation", duijie_mediation::KIND, duijie_mediation::routes).await
}
