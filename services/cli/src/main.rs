//! `duijie`: see the library crate (`duijie_cli`) for the commands.

fn main() -> std::process::ExitCode {
    duijie_cli::main_entry()
}
