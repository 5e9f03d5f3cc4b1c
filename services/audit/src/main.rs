//! `duijie-audit`: see the crate's library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    duijie_audit::service::main().await
}
