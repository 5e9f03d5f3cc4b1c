// `sqlx::migrate!` embeds the migration files at compile time but does not tell cargo
// to rebuild when a new file appears; this does.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/bus");
}
