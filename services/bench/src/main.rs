//! `duijie-bench`: the raw RabbitMQ ceiling against the duijie bus (outbox → relay → inbox), and
//! the bus's latency at a fixed rate (`duijie_bench::bus`); with `--topology` first, the broker's
//! topology and a referral's delivery against the size of the agency directory
//! (`duijie_bench::topology`).

use clap::Parser;
use duijie_bench::bus::BusArgs;
use duijie_bench::topology::TopologyArgs;

#[derive(Parser, Debug)]
#[command(about = "Raw RabbitMQ ceiling vs the duijie bus (outbox -> relay -> inbox), and bus latency at a fixed rate; `duijie-bench --topology --help` for the topology benchmark")]
struct Cli {
    #[command(flatten)]
    bus: BusArgs,
}

#[derive(Parser, Debug)]
#[command(
    name = "duijie-bench --topology",
    bin_name = "duijie-bench --topology",
    about = "The broker's queues, memory and declare time against directories of 1,000 to 100,000 agencies, and a referral to randomly chosen agencies delivered and applied"
)]
struct TopologyCli {
    #[command(flatten)]
    topology: TopologyArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--topology") {
        args.remove(1);
        let cli = TopologyCli::parse_from(args);
        let _telemetry = duijie_common::telemetry::init("duijie-bench", "warn,sqlx=error", std::io::stderr)?;
        return duijie_bench::topology::run(&cli.topology).await;
    }
    let cli = Cli::parse_from(args);
    let _telemetry = duijie_common::telemetry::init("duijie-bench", "warn", std::io::stderr)?;
    duijie_bench::bus::run(&cli.bus).await
}
