//! `duijie-procuratorate`: see the crate's library for its API and rules.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    duijie_agency::service::main("procuratorate", duijie_procuratorate::KIND, duijie_procuratorate::routes).await
}
