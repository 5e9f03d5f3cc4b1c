//! `duijie-system-bench`: the whole stack under sustained load (`duijie_bench::system`).

use clap::Parser;
use duijie_bench::system::SystemArgs;

#[derive(Parser, Debug)]
#[command(about = "The whole duijie stack under load: cases/s through their lifecycle, gRPC latency per method, audit lag, the gate, idle CPU")]
struct Cli {
    #[command(flatten)]
    system: SystemArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = duijie_common::telemetry::init("duijie-system-bench", "warn,sqlx=error", std::io::stderr)?;
    duijie_bench::system::run(&cli.system).await
}
