//! `duijie-bench`: the raw RabbitMQ ceiling against the duijie bus (outbox → relay → inbox), and
//! the bus's latency at a fixed rate (`duijie_bench::bus`).

use clap::Parser;
use duijie_bench::bus::BusArgs;

#[derive(Parser, Debug)]
#[command(about = "Raw RabbitMQ ceiling vs the duijie bus (outbox -> relay -> inbox), and bus latency at a fixed rate")]
struct Cli {
    #[command(flatten)]
    bus: BusArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = duijie_common::telemetry::init("duijie-bench", "warn", std::io::stderr)?;
    duijie_bench::bus::run(&cli.bus).await
}
