//! `duijie-bus status` against a running stack: every agency of the directory with its inbox and
//! whether a service consumes it, the tap, the dead letters, the audit store and the gates.

use std::time::Duration;

use duijie_tests::stack::Stack;
use secrecy::ExposeSecret as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_configured_agencies_and_says_which_are_served() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // The directory names one more centre: the running mediation service acts for it at once
    // (its kind's partitions carry it; no queue of its own).
    let path = stack.directory_file();
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str("  - { id: \"mediation:431099\", name: \"未上线的调解中心\" }\n");
    std::fs::write(&path, text)?;

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_duijie-bus"))
            .args(["--prefix", stack.prefix(), "--amqp-url", stack.bus.amqp_cfg.url.expose_secret()])
            .args(["--partitions", "2", "--tap-partitions", "2"])
            .args(["status", "--listen-ms", "3000", "--directory"])
            .arg(&path)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("from the directory"), "{stdout}");
    let line = |id: &str| stdout.lines().find(|l| l.trim_start().starts_with(id)).map(str::to_owned).unwrap_or_default();
    assert!(line("court:431003 ").contains("served") && !line("court:431003 ").contains("NOT"), "{stdout}");
    assert!(line("mediation:431003 ").contains("served"), "{stdout}");
    let added = line("mediation:431099 ");
    assert!(added.contains("served") && !added.contains("NOT") && added.contains("未上线的调解中心"), "{stdout}");
    assert!(!stdout.contains("supervisor:"), "supervisors have no inbox: {stdout}");
    assert!(!stdout.contains("not served"), "{stdout}");
    // Every partition is listed with its consumers.
    assert!(stdout.contains(&format!("{}.inbox.mediation.p1", stack.prefix())), "{stdout}");
    assert!(stdout.contains(&format!("{}.audit.tap.p1", stack.prefix())), "{stdout}");
    assert!(stdout.contains("audit gates (new referrals):"), "the running services' gates report: {stdout}");
    stack.stop().await
}
