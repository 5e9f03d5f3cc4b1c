//! `duijie-console`: configuration from `DUIJIE_CONFIG_DIR` (default `config/console`), then
//! the console until SIGINT/SIGTERM.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    duijie_common::process::run_process("console", |cfg: duijie_console::ConsoleConfig, shutdown| async move {
        let running = duijie_console::start(cfg, shutdown).await?;
        Ok((running.addr, running.handle))
    })
    .await
}
