//! CPU time from `/proc`: of the whole machine, and of chosen processes (the system benchmark's
//! idle measurement: the services, PostgreSQL and RabbitMQ).

use std::collections::BTreeSet;
use std::path::Path;

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat` and `/proc/stat` (100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Busy CPU time of the whole machine so far (all processes: broker, database, this one), from
/// /proc/stat; on a saturated 2-core machine, throughput is the inverse of CPU per message.
pub fn busy_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Some(busy / TICKS_PER_SECOND)
}

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces):
/// index 0 is the state, 1 the parent pid, 11 utime, 12 stime, 13 cutime, 14 cstime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// The parent of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// CPU seconds `pid` (all its threads) used so far. Not those of children that ended: the
/// postmaster's would include every other client's closed connections.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let t: f64 = (11..=12).filter_map(|i| f.get(i)?.parse::<f64>().ok()).sum();
    Some(t / TICKS_PER_SECOND)
}

/// The command line of `pid`, arguments separated by spaces (PostgreSQL writes what a backend
/// is doing there: `postgres: 15/main: <user> <database> <client> idle`).
pub fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned()).unwrap_or_default()
}

/// Every process whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter(|p| parent_of(*p) == Some(pid)).collect()
}

/// The process listening on TCP `port` (IPv4 or IPv6), found through its socket's inode.
pub fn listener_of(port: u16) -> Option<u32> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT, st 0A is LISTEN, inode is the tenth field.
            let listening = f.get(3) == Some(&"0A");
            let on_port = f.get(1).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) == Some(port);
            if listening && on_port && let Some(inode) = f.get(9) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        let Ok(fds) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else { return false };
        fds.filter_map(Result::ok).any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref())))
    })
}

/// Which children of a group's root belong to it.
#[derive(Clone)]
pub enum Children {
    None,
    All,
    /// Those whose command line passes the test.
    Matching(std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Children::None => "None",
            Children::All => "All",
            Children::Matching(_) => "Matching(..)",
        })
    }
}

/// Processes measured together: a root and those of its children that belong to the group at
/// each look (PostgreSQL's postmaster, its background processes and the backends of chosen
/// databases; RabbitMQ's beam and its helpers).
#[derive(Debug, Clone)]
pub struct ProcessGroup {
    pub name: String,
    pub root: u32,
    /// Whether the root itself is a member (not for a group of some of its children only).
    pub with_root: bool,
    pub children: Children,
}

/// What a group used over a span of time.
#[derive(Debug, Clone)]
pub struct GroupUsage {
    pub name: String,
    /// CPU seconds per second of wall time.
    pub cores: f64,
    /// Processes that were measured (alive at both looks).
    pub processes: usize,
}

impl ProcessGroup {
    /// CPU seconds so far of each member alive now.
    fn look(&self) -> std::collections::BTreeMap<u32, f64> {
        let mut pids = if self.with_root { vec![self.root] } else { Vec::new() };
        match &self.children {
            Children::None => {}
            Children::All => pids.extend(children_of(self.root)),
            Children::Matching(keep) => pids.extend(children_of(self.root).into_iter().filter(|p| keep(&command_line(*p)))),
        }
        pids.into_iter().filter_map(|p| Some((p, process_cpu_seconds(p)?))).collect()
    }
}

/// What `groups` had used at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: std::time::Instant,
    looks: Vec<std::collections::BTreeMap<u32, f64>>,
}

/// Takes a [`Snapshot`] of `groups`.
pub fn snapshot(groups: &[ProcessGroup]) -> Snapshot {
    Snapshot { at: std::time::Instant::now(), looks: groups.iter().map(ProcessGroup::look).collect() }
}

/// What `groups` used since `before`, counted over the processes alive at both ends (a process
/// that ended meanwhile is not counted; one that started counts from zero).
pub fn usage_since(groups: &[ProcessGroup], before: &Snapshot) -> Vec<GroupUsage> {
    let secs = before.at.elapsed().as_secs_f64();
    groups
        .iter()
        .zip(&before.looks)
        .map(|(g, before)| {
            let after = g.look();
            let used: f64 = after.iter().map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0)).sum();
            GroupUsage { name: g.name.clone(), cores: used / secs, processes: after.keys().filter(|p| before.contains_key(p)).count() }
        })
        .collect()
}

/// Measures `groups` over `span` ([`usage_since`] a [`snapshot`] taken now).
pub async fn measure(groups: &[ProcessGroup], span: std::time::Duration) -> Vec<GroupUsage> {
    let before = snapshot(groups);
    tokio::time::sleep(span).await;
    usage_since(groups, &before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_parent_and_uses_cpu() {
        let me = std::process::id();
        assert!(parent_of(me).is_some());
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64.wrapping_add(1));
        }
        assert!(process_cpu_seconds(me).is_some_and(|s| s > 0.0));
        assert!(busy_cpu_seconds().is_some_and(|s| s > 0.0));
    }

    #[test]
    fn a_listener_is_found_by_its_port() -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        assert_eq!(listener_of(port), Some(std::process::id()));
        Ok(())
    }
}
