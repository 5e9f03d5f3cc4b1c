//! The three-node RabbitMQ cluster of this machine for cluster fault tests
//! (`scripts/deps.sh --cluster`: `duijie-c1@localhost` … `duijie-c3@localhost`, AMQP 5681–5683):
//! found from the environment `scripts/deps.sh` writes (`target/duijie-env.sh`), and the faults a
//! test does to it — SIGKILL a node and start it again as `scripts/deps.sh` does, SIGSTOP a node
//! and SIGCONT it ("cut off and back") — with the looks it needs: which node leads the most
//! quorum queues of a prefix, whether a node is back in the cluster and its queue members have
//! caught up. Everything goes through `rabbitmqctl` (the tests run as root, like the fault tests).
//!
//! A test that needs the cluster fails, not skips, when the environment does not name one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use duijie_common::config::AmqpConfig;
use secrecy::SecretString;
use serde_json::Value;

use crate::wait_until;

/// What `scripts/deps.sh --cluster` writes into `target/duijie-env.sh`.
pub const URLS_VAR: &str = "DUIJIE_CLUSTER_AMQP_URLS";
pub const NODES_VAR: &str = "DUIJIE_CLUSTER_RABBIT_NODES";
pub const ENV_FILES_VAR: &str = "DUIJIE_CLUSTER_RABBIT_CONF_ENV_FILES";
pub const PID_FILES_VAR: &str = "DUIJIE_CLUSTER_RABBIT_PID_FILES";

/// How long one `rabbitmqctl` call may take (a call that would wait on a stopped node must not
/// hang the test).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to start and rejoin the cluster.
pub const RESTART_DEADLINE: Duration = Duration::from_secs(120);

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// Erlang node name, e.g. `duijie-c1@localhost`.
    pub name: String,
    /// Its AMQP URL (with the password).
    pub url: SecretString,
    /// The `RABBITMQ_CONF_ENV_FILE` it is started with.
    pub env_file: PathBuf,
    /// Its pid file (removed before a start, as `scripts/deps.sh` does).
    pub pid_file: PathBuf,
}

/// The cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<Node>,
}

/// A quorum queue as `rabbitmqctl list_queues` shows it.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub name: String,
    pub leader: String,
    pub members: Vec<String>,
    pub online: Vec<String>,
}

/// One member of a quorum queue as `rabbitmq-queues quorum_status` shows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub node: String,
    /// `leader`, `follower`, or what else Ra says (`candidate`, `noproc`, …).
    pub raft_state: String,
    pub log_index: Option<u64>,
    pub commit_index: Option<u64>,
}

fn required(var: &str) -> anyhow::Result<Vec<String>> {
    let v = std::env::var(var).map_err(|_| {
        anyhow::anyhow!(
            "{var} is not set: this test needs the three-node RabbitMQ cluster. Run `scripts/deps.sh --cluster` \
             (scripts/test.sh does), then `. target/duijie-env.sh`"
        )
    })?;
    Ok(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

/// `kill -<signal> <pid>`.
async fn signal(sig: &str, pid: u32) -> anyhow::Result<()> {
    crate::run_cmd("kill", &[&format!("-{sig}"), &pid.to_string()]).await
}

/// True if process `pid` exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(")").and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Runs `program args`, bounded by [`CTL_TIMEOUT`]; its stdout, or an error with its output.
async fn ctl(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CTL_TIMEOUT, child)
        .await
        .with_context(|| format!("{program} {args:?} did not answer within {CTL_TIMEOUT:?}"))?
        .with_context(|| format!("running {program} (scripts/deps.sh installs RabbitMQ; the tests run as root)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "{program} {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    Ok(stdout)
}

/// `rabbitmqctl -q -n <node> eval <expr>`: what it printed.
async fn eval(node: &str, expr: &str) -> anyhow::Result<String> {
    Ok(ctl("rabbitmqctl", &["-q", "-n", node, "eval", expr]).await?.trim().to_owned())
}

/// The port of an `amqp://user:password@host:port/vhost` URL.
fn amqp_port(url: &SecretString) -> Option<u64> {
    let rest = secrecy::ExposeSecret::expose_secret(url).rsplit_once('@').map(|(_, r)| r.to_owned())?;
    rest.split('/').next()?.rsplit_once(':')?.1.parse().ok()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default()
}

impl Cluster {
    /// The cluster `scripts/deps.sh --cluster` wrote into the environment; an error saying to run
    /// it when it did not.
    pub fn from_env() -> anyhow::Result<Self> {
        let urls: Vec<SecretString> = required(URLS_VAR)?.into_iter().map(SecretString::from).collect();
        let names = required(NODES_VAR)?;
        let env_files = required(ENV_FILES_VAR)?;
        let pid_files = required(PID_FILES_VAR)?;
        anyhow::ensure!(names.len() >= 3, "{NODES_VAR} names {} node(s); the cluster tests need three (scripts/deps.sh --cluster)", names.len());
        anyhow::ensure!(
            urls.len() == names.len() && env_files.len() == names.len() && pid_files.len() == names.len(),
            "{URLS_VAR}, {NODES_VAR}, {ENV_FILES_VAR} and {PID_FILES_VAR} name different numbers of nodes; run scripts/deps.sh --cluster again"
        );
        let nodes = names
            .into_iter()
            .zip(urls)
            .zip(env_files.into_iter().zip(pid_files))
            .map(|((name, url), (env_file, pid_file))| Node { name, url, env_file: env_file.into(), pid_file: pid_file.into() })
            .collect();
        Ok(Self { nodes })
    }

    /// Waits until no other cluster test on this machine runs and keeps it so while the returned
    /// guard lives: an exclusive lock on `${TMPDIR:-/tmp}/duijie-cluster-tests.lock`. The nextest
    /// group `cluster` serialises the tests of one run only; this also keeps apart the runs of two
    /// worktrees (or engineers) sharing the one cluster of the machine, whose kills and stops
    /// would otherwise land in each other's middle.
    pub async fn exclusive(&self) -> anyhow::Result<ClusterLock> {
        const WAIT: Duration = Duration::from_secs(600);
        let path = std::env::temp_dir().join("duijie-cluster-tests.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let started = tokio::time::Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(ClusterLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    anyhow::ensure!(started.elapsed() < WAIT, "another cluster test has held {} for {WAIT:?}", path.display());
                    if !told {
                        eprintln!("waiting for another cluster test on this machine to finish ({} is held)", path.display());
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(anyhow::Error::from(e).context(format!("locking {}", path.display()))),
            }
        }
    }

    /// The node's index by Erlang name.
    pub fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        self.nodes.iter().position(|n| n.name == name).ok_or_else(|| anyhow::anyhow!("{name} is not a node of the cluster"))
    }

    /// Connection settings that try node `first` first and then the others in order (as a
    /// service configured with `amqp.url` and `amqp.cluster_urls` does).
    pub fn amqp(&self, first: usize, connection_name: &str) -> AmqpConfig {
        let n = self.nodes.len();
        let mut order = (0..n).map(|i| self.nodes[(first + i) % n].url.clone());
        let url = order.next().unwrap_or_else(|| SecretString::from(String::new()));
        AmqpConfig { cluster_urls: order.collect(), ..AmqpConfig::new(url, connection_name) }
    }

    /// Checks that every node runs, counts all of them as running members, knows of no
    /// partition and has its at-least-once dead-letter supervisor: the state the tests start
    /// from (`scripts/deps.sh --cluster` repairs it).
    pub async fn check_formed(&self) -> anyhow::Result<()> {
        let want = self.sorted_names();
        for node in &self.nodes {
            let running = self.running_nodes(&node.name).await.with_context(|| {
                format!("RabbitMQ cluster node {} does not answer; run scripts/deps.sh --cluster", node.name)
            })?;
            anyhow::ensure!(running == want, "{} sees {running:?} running, not {want:?}; run scripts/deps.sh --cluster", node.name);
            let partitions = eval(&node.name, "rabbit_node_monitor:partitions().").await?;
            anyhow::ensure!(partitions == "[]", "{} was partitioned from {partitions}; run scripts/deps.sh --cluster", node.name);
            // RabbitMQ 3.10.8 loses a node's at-least-once dead-letter supervisor for good when
            // its workers fail together (quorum queue members churning after a partition healed):
            // that node can then lead no queue of the bus (rabbitmq-server #16652).
            let dlx = eval(&node.name, "is_pid(whereis(rabbit_fifo_dlx_sup)).").await?;
            anyhow::ensure!(
                dlx == "true",
                "{} lost its rabbit_fifo_dlx_sup (RabbitMQ gave up restarting at-least-once dead-letter workers, rabbitmq-server #16652): it can lead no quorum queue of the bus; run scripts/deps.sh --cluster (restarts its rabbit app)",
                node.name
            );
        }
        Ok(())
    }

    /// Waits until [`Cluster::check_formed`] holds (a partition healing, a node rejoining).
    pub async fn wait_formed(&self, deadline: Duration) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            match self.check_formed().await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() >= deadline => return Err(e.context(format!("the cluster is not formed after {deadline:?}"))),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    fn sorted_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        v.sort();
        v
    }

    /// The cluster's running nodes as `via` sees them, sorted.
    pub async fn running_nodes(&self, via: &str) -> anyhow::Result<Vec<String>> {
        let out = eval(via, "io:format(\"~s~n\", [lists:join(\",\", [atom_to_list(N) || N <- lists:usort(rabbit_nodes:all_running())])]), ok.").await?;
        let line = out.lines().next().unwrap_or_default();
        Ok(line.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
    }

    /// The OS pid of node `i`'s Erlang VM (asked of the node itself, falling back on its pid
    /// file).
    pub async fn beam_pid(&self, i: usize) -> anyhow::Result<u32> {
        let node = &self.nodes[i];
        let asked = eval(&node.name, "os:getpid().").await.ok().and_then(|s| s.trim_matches('"').parse::<u32>().ok());
        let pid = match asked {
            Some(p) => p,
            None => std::fs::read_to_string(&node.pid_file)
                .with_context(|| format!("{} does not answer and has no pid file {}", node.name, node.pid_file.display()))?
                .trim()
                .parse()
                .with_context(|| format!("pid file {}", node.pid_file.display()))?,
        };
        anyhow::ensure!(alive(pid), "{}: pid {pid} is not running", node.name);
        Ok(pid)
    }

    /// Kills node `i` with SIGKILL and waits until its VM is gone. The returned guard starts the
    /// node again when dropped armed (a failing test does not leave it down); start it with
    /// [`Cluster::start`] and then [`Killed::disarm`].
    pub async fn kill(&self, i: usize) -> anyhow::Result<Killed> {
        let pid = self.beam_pid(i).await?;
        let node = self.nodes[i].clone();
        signal("KILL", pid).await?;
        let killed = Killed { pid, node, armed: true };
        wait_until(&format!("{} (pid {pid}) to die", self.nodes[i].name), Duration::from_secs(30), || async move { Ok(!alive(pid)) })
            .await?;
        Ok(killed)
    }

    /// Starts node `i` as `scripts/deps.sh` does (`RABBITMQ_CONF_ENV_FILE=… rabbitmq-server
    /// -detached`, its stale pid file removed first) and waits until it has booted and every node
    /// counts it as running.
    pub async fn start(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let _ = std::fs::remove_file(&node.pid_file);
        let env = format!("RABBITMQ_CONF_ENV_FILE={}", node.env_file.display());
        ctl("env", &[&env, "rabbitmq-server", "-detached"]).await.with_context(|| format!("starting {}", node.name))?;
        wait_until(&format!("{} to boot", node.name), RESTART_DEADLINE, || async {
            Ok(ctl("rabbitmqctl", &["-q", "-n", &node.name, "await_startup", "--timeout", "10"]).await.is_ok())
        })
        .await?;
        let want = self.sorted_names();
        for other in &self.nodes {
            wait_until(&format!("{} to see {} back in the cluster", other.name, node.name), RESTART_DEADLINE, || async {
                Ok(self.running_nodes(&other.name).await.is_ok_and(|r| r == want))
            })
            .await?;
        }
        Ok(())
    }

    /// Stops node `i` with SIGSTOP: it keeps its sockets open and answers nothing, as a node cut
    /// off from the network does. The returned guard sends SIGCONT when dropped (so a failing
    /// test does not leave it stopped); [`Stopped::resume`] does it now.
    pub async fn stop(&self, i: usize) -> anyhow::Result<Stopped> {
        let pid = self.beam_pid(i).await?;
        signal("STOP", pid).await?;
        Ok(Stopped { pid, resumed: false })
    }

    /// The quorum queues whose names start with `prefix`, as node `via` lists them.
    pub async fn queues(&self, via: usize, prefix: &str) -> anyhow::Result<Vec<QueueInfo>> {
        let out = ctl(
            "rabbitmqctl",
            &["-q", "-n", &self.nodes[via].name, "list_queues", "name", "type", "leader", "members", "online", "--formatter", "json"],
        )
        .await?;
        let all: Vec<Value> = serde_json::from_str(out.trim()).with_context(|| format!("list_queues printed {out}"))?;
        Ok(all
            .iter()
            .filter(|q| q.get("type").and_then(Value::as_str) == Some("quorum"))
            .filter_map(|q| {
                let name = q.get("name")?.as_str()?;
                name.starts_with(prefix).then(|| QueueInfo {
                    name: name.to_owned(),
                    leader: q.get("leader").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    members: strings(q.get("members")),
                    online: strings(q.get("online")),
                })
            })
            .collect())
    }

    /// What the queues whose names start with `prefix` hold, one line each (name, messages
    /// ready, unacknowledged, consumers, leader), as the first node that answers lists them, and
    /// the client connections on each node whose names contain `connections` (the name a client
    /// gave its connection): for a failing test's report.
    pub async fn describe(&self, prefix: &str, connections: &str) -> anyhow::Result<String> {
        let bounded = |args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tokio::time::timeout(Duration::from_secs(20), ctl("rabbitmqctl", &args))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 20 s")))
        };
        let mut report = None;
        let mut last = None;
        for node in &self.nodes {
            let args = ["-q", "-n", &node.name, "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers", "leader", "--no-table-headers"];
            match bounded(args.iter().map(|a| a.to_string()).collect()).await {
                Ok(out) => {
                    report = Some(out.lines().filter(|l| l.starts_with(prefix)).collect::<Vec<_>>().join("\n"));
                    break;
                }
                Err(e) => last = Some(e.context(format!("listing queues on {}", node.name))),
            }
        }
        let mut report = match (report, last) {
            (Some(r), _) => r,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(anyhow::anyhow!("no nodes")),
        };
        // The cluster's connections (any node lists them all), by the node (AMQP port) they are on.
        let mut by_port: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut listed = Err(anyhow::anyhow!("no nodes"));
        for node in &self.nodes {
            let args = ["-q", "-n", &node.name, "list_connections", "port", "client_properties", "--formatter", "json"];
            listed = bounded(args.iter().map(|a| a.to_string()).collect()).await;
            if listed.is_ok() {
                break;
            }
        }
        match listed {
            Ok(out) => {
                let all: Vec<Value> = serde_json::from_str(out.trim()).unwrap_or_default();
                for c in &all {
                    let port = c.get("port").and_then(Value::as_u64).unwrap_or(0);
                    let name = c
                        .get("client_properties")
                        .and_then(Value::as_array)
                        .and_then(|ps| ps.iter().find(|p| p.get(0).and_then(Value::as_str) == Some("connection_name")))
                        .and_then(|p| p.get(2))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if name.contains(connections) {
                        by_port.entry(port).or_default().push(name.to_owned());
                    }
                }
                for (port, mut names) in by_port {
                    names.sort();
                    let node = self.nodes.iter().find(|n| amqp_port(&n.url) == Some(port)).map_or_else(|| format!("port {port}"), |n| n.name.clone());
                    report.push_str(&format!("\nconnections on {node}: {}", names.join(", ")));
                }
            }
            Err(e) => report.push_str(&format!("\n(connections not listed: {e:#})")),
        }
        Ok(report)
    }

    /// The leader of every quorum queue whose name starts with `prefix`, as the queue's member on
    /// node `via` knows it (Raft's view, asked of that member: `ra:members/2`), and the nodes the
    /// queue has members on, from `via`'s own copy of the metadata. Unlike `list_queues`, asks
    /// no other node, so it answers while one is stopped; an empty leader: the member does not
    /// know one (an election under way).
    pub async fn leaders(&self, via: usize, prefix: &str) -> anyhow::Result<Vec<QueueInfo>> {
        anyhow::ensure!(!prefix.contains(['"', '\\']), "a prefix rabbitmqctl eval would mangle: {prefix}");
        let expr = format!(
            r#"P = <<"{prefix}">>,
Out = [#{{name => N,
          leader => case catch ra:members({{RaName, node()}}, 5000) of {{ok, _, {{_, L}}}} -> atom_to_binary(L); _ -> <<>> end,
          members => [atom_to_binary(M) || M <- maps:get(nodes, amqqueue:get_type_state(Q), [])]}}
       || Q <- rabbit_amqqueue:list(<<"/">>), amqqueue:get_type(Q) =:= rabbit_quorum_queue,
          {{resource, _, queue, N}} <- [amqqueue:get_name(Q)],
          binary:longest_common_prefix([N, P]) =:= byte_size(P),
          {{RaName, _}} <- [amqqueue:get_pid(Q)]],
io:format("~s~n", [rabbit_json:encode(Out)]), ok."#
        );
        let out = eval(&self.nodes[via].name, &expr).await?;
        let json = out.lines().find(|l| l.starts_with('[')).ok_or_else(|| anyhow::anyhow!("the leaders' look printed {out}"))?;
        let all: Vec<Value> = serde_json::from_str(json).with_context(|| format!("the leaders' look printed {out}"))?;
        Ok(all
            .iter()
            .map(|q| QueueInfo {
                name: q.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                leader: q.get("leader").and_then(Value::as_str).unwrap_or_default().to_owned(),
                members: strings(q.get("members")),
                online: Vec::new(),
            })
            .collect())
    }

    /// The node that leads the most quorum queues whose names start with `prefix` (ties: the
    /// first in the cluster's order), with how many it leads, as node `via` sees them
    /// ([`Cluster::leaders`]).
    pub async fn busiest_leader(&self, via: usize, prefix: &str) -> anyhow::Result<(usize, usize)> {
        let queues = self.leaders(via, prefix).await?;
        anyhow::ensure!(!queues.is_empty(), "no quorum queues start with {prefix}");
        let mut led: BTreeMap<usize, usize> = BTreeMap::new();
        for q in &queues {
            if let Ok(i) = self.index_of(&q.leader) {
                *led.entry(i).or_default() += 1;
            }
        }
        led.into_iter()
            .max_by(|(a, x), (b, y)| x.cmp(y).then(b.cmp(a)))
            .ok_or_else(|| anyhow::anyhow!("no queue of {prefix} has a leader: {queues:?}"))
    }

    /// Every member of every quorum queue whose name starts with `prefix` (Raft state, log and
    /// commit index), asked of node `via` in one call (what `rabbitmq-queues quorum_status`
    /// shows, for all the queues at once).
    pub async fn quorum_status(&self, via: usize, prefix: &str) -> anyhow::Result<BTreeMap<String, Vec<Member>>> {
        anyhow::ensure!(!prefix.contains(['"', '\\']), "a prefix rabbitmqctl eval would mangle: {prefix}");
        let expr = format!(
            r#"P = <<"{prefix}">>,
Qs = [N || Q <- rabbit_amqqueue:list(<<"/">>), amqqueue:get_type(Q) =:= rabbit_quorum_queue,
           {{resource, _, queue, N}} <- [amqqueue:get_name(Q)],
           binary:longest_common_prefix([N, P]) =:= byte_size(P)],
Str = fun(V) when is_atom(V) -> atom_to_binary(V); (V) when is_integer(V) -> V; (V) -> iolist_to_binary(io_lib:format("~p", [V])) end,
Out = [#{{name => N, members => case catch rabbit_quorum_queue:status(<<"/">>, N) of
                             L when is_list(L) -> [maps:from_list([{{K, Str(V)}} || {{K, V}} <- M]) || M <- L, is_list(M)];
                             Other -> [#{{<<"error">> => Str(Other)}}]
                         end}} || N <- Qs],
io:format("~s~n", [rabbit_json:encode(Out)]), ok."#
        );
        let out = eval(&self.nodes[via].name, &expr).await?;
        let json = out.lines().find(|l| l.starts_with('[')).ok_or_else(|| anyhow::anyhow!("quorum status printed {out}"))?;
        let all: Vec<Value> = serde_json::from_str(json).with_context(|| format!("quorum status printed {out}"))?;
        let mut by_queue = BTreeMap::new();
        for q in all {
            let name = q.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let members = q
                .get("members")
                .and_then(Value::as_array)
                .map(|ms| {
                    ms.iter()
                        .map(|m| Member {
                            node: m.get("Node Name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                            raft_state: m
                                .get("Raft State")
                                .and_then(Value::as_str)
                                .or_else(|| m.get("error").and_then(Value::as_str))
                                .unwrap_or_default()
                                .to_owned(),
                            log_index: m.get("Log Index").and_then(Value::as_u64),
                            commit_index: m.get("Commit Index").and_then(Value::as_u64),
                        })
                        .collect()
                })
                .unwrap_or_default();
            by_queue.insert(name, members);
        }
        Ok(by_queue)
    }

    /// Waits until node `i`'s copies of the quorum queues of `prefix` have caught up: first
    /// until every queue has one leader and members on all the cluster's nodes (noting each
    /// leader's commit index then: what the cluster had committed when the node came back), then
    /// until the member on node `i` follows (or leads) with its log at least that far. Asked of
    /// another node. (Not "as far as the leader is now": under load that moves on.)
    pub async fn wait_caught_up(&self, i: usize, prefix: &str, deadline: Duration) -> anyhow::Result<()> {
        let via = (i + 1) % self.nodes.len();
        let name = self.nodes[i].name.clone();
        let last = std::sync::Mutex::new(String::new());
        let seen = |what: String| {
            if let Ok(mut l) = last.lock() {
                *l = what;
            }
        };
        let targets: std::sync::Mutex<BTreeMap<String, u64>> = Default::default();
        let result = wait_until(&format!("{name}'s quorum queue members of {prefix} to catch up"), deadline, || {
            let (name, seen, targets) = (name.clone(), &seen, &targets);
            async move {
                let status = self.quorum_status(via, prefix).await?;
                anyhow::ensure!(!status.is_empty(), "no quorum queues start with {prefix}");
                let mut targets = targets.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                if targets.is_empty() {
                    // The commit index each queue's leader had reached when all were back.
                    let mut found = BTreeMap::new();
                    for (queue, members) in &status {
                        let leaders: Vec<&Member> = members.iter().filter(|m| m.raft_state == "leader").collect();
                        let (Some(Member { commit_index: Some(commit), .. }), 1) = (leaders.first().copied(), leaders.len()) else {
                            seen(format!("{queue}: {members:?}"));
                            return Ok(false);
                        };
                        if members.len() != self.nodes.len() || !members.iter().any(|m| m.node == name) {
                            seen(format!("{queue} has not a member on every node: {members:?}"));
                            return Ok(false);
                        }
                        found.insert(queue.clone(), *commit);
                    }
                    *targets = found;
                }
                for (queue, members) in &status {
                    let target = targets.get(queue).copied().unwrap_or(0);
                    let mine = members.iter().find(|m| m.node == name);
                    let caught_up = mine.is_some_and(|m| {
                        matches!(m.raft_state.as_str(), "leader" | "follower") && m.log_index.is_some_and(|log| log >= target)
                    });
                    if !caught_up {
                        seen(format!("{queue} (to reach {target}): {members:?}"));
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        })
        .await;
        result.with_context(|| format!("last seen: {}", last.lock().map(|l| l.clone()).unwrap_or_default()))
    }
}

/// A node stopped with SIGSTOP; SIGCONT when dropped.
#[derive(Debug)]
pub struct Stopped {
    pub pid: u32,
    resumed: bool,
}

impl Stopped {
    /// Sends SIGCONT.
    pub async fn resume(mut self) -> anyhow::Result<()> {
        self.resumed = true;
        signal("CONT", self.pid).await
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.resumed {
            let _ = std::process::Command::new("kill").args(["-CONT", &self.pid.to_string()]).status();
        }
    }
}

/// A node killed with SIGKILL; started again (in the background, if it does not answer) when
/// dropped armed.
#[derive(Debug)]
pub struct Killed {
    /// The pid its VM had.
    pub pid: u32,
    node: Node,
    armed: bool,
}

impl Killed {
    /// The node was started again: nothing to do on drop.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if self.armed {
            // Not waited for: a drop may not block the runtime. scripts/deps.sh --cluster repairs
            // whatever this leaves.
            let script = format!(
                "rabbitmqctl -q -n '{n}' ping >/dev/null 2>&1 || {{ rm -f '{p}'; RABBITMQ_CONF_ENV_FILE='{e}' rabbitmq-server -detached; }}",
                n = self.node.name,
                p = self.node.pid_file.display(),
                e = self.node.env_file.display()
            );
            let _ = std::process::Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
    }
}

/// The cluster tests' machine-wide lock ([`Cluster::exclusive`]); released when dropped.
#[derive(Debug)]
pub struct ClusterLock {
    _file: std::fs::File,
}
