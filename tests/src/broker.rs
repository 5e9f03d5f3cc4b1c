//! Broker users for one test: one per service, with the permissions `scripts/run.sh` gives the
//! local stack's (`Topology::permissions`, for the test's prefix), named after the test's prefix
//! so that tests running side by side on one broker never share one; deleted at the end. Made
//! with `rabbitmqctl eval` in one call each way (a `rabbitmqctl` call costs about a second of
//! Erlang start-up; scripts/deps.sh's quick check does the same). Nothing here touches `guest`
//! or `duijie`: only the scripts do.

use anyhow::Context as _;
use duijie_common::amqp::{SERVICES, Topology};
use duijie_common::config::AmqpConfig;
use secrecy::{ExposeSecret as _, SecretString};

/// The broker users of one test, by service.
pub struct ServiceUsers {
    /// (service, user name, password)
    users: Vec<(String, String, SecretString)>,
    admin_url: String,
    deleted: bool,
}

/// Who created and deleted them, as the broker's log reads.
const ACTING: &str = "duijie-tests";

async fn rabbitmqctl_eval(expr: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "eval", expr])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running rabbitmqctl (scripts/deps.sh installs RabbitMQ; the tests run as root)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success() && stdout.trim() == "ok", "rabbitmqctl eval failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `amqp://user:password@host…` from `url` with its user and password replaced.
fn with_credentials(url: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").context("an AMQP URL has a scheme")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Ok(format!("{scheme}://{user}:{password}@{host}"))
}

impl ServiceUsers {
    /// Creates `<prefix>-<service>` for every service with its permissions for `topology`.
    pub async fn create(topology: &Topology, prefix: &str, admin_url: &str) -> anyhow::Result<Self> {
        let mut users = Vec::new();
        let mut expr = format!("A = <<\"{ACTING}\">>, ");
        for service in SERVICES {
            let p = topology.permissions(service).with_context(|| format!("no permissions for {service}"))?;
            let user = format!("{prefix}-{service}");
            let password = uuid::Uuid::new_v4().simple().to_string();
            // The patterns hold no backslash or quote (regex_escape uses bracket expressions).
            for part in [&p.configure, &p.write, &p.read] {
                anyhow::ensure!(!part.contains(['"', '\\']), "a pattern rabbitmqctl eval would mangle: {part}");
            }
            expr.push_str(&format!(
                "ok = rabbit_auth_backend_internal:add_user(<<\"{user}\">>, <<\"{password}\">>, A), \
                 ok = rabbit_auth_backend_internal:set_permissions(<<\"{user}\">>, <<\"/\">>, <<\"{}\">>, <<\"{}\">>, <<\"{}\">>, A), ",
                p.configure, p.write, p.read
            ));
            users.push((service.to_owned(), user, SecretString::from(password)));
        }
        expr.push_str("ok.");
        rabbitmqctl_eval(&expr).await.context("creating the test's broker users")?;
        Ok(Self { users, admin_url: admin_url.to_owned(), deleted: false })
    }

    /// The connection settings of `service`'s user.
    pub fn amqp(&self, service: &str) -> anyhow::Result<AmqpConfig> {
        let (_, user, password) = self.users.iter().find(|(s, _, _)| s == service).with_context(|| format!("no broker user for {service}"))?;
        let url = with_credentials(&self.admin_url, user, password.expose_secret())?;
        Ok(AmqpConfig::new(url, user.clone()))
    }

    /// The user name of `service`.
    pub fn user(&self, service: &str) -> Option<&str> {
        self.users.iter().find(|(s, _, _)| s == service).map(|(_, u, _)| u.as_str())
    }

    /// Deletes the users (their connections are closed by the broker).
    pub async fn delete(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        rabbitmqctl_eval(&self.delete_expr()).await.context("deleting the test's broker users")
    }

    fn delete_expr(&self) -> String {
        let mut expr = format!("A = <<\"{ACTING}\">>, ");
        for (_, user, _) in &self.users {
            // Already gone is fine: a test may delete one itself.
            expr.push_str(&format!("_ = rabbit_auth_backend_internal:delete_user(<<\"{user}\">>, A), "));
        }
        expr.push_str("ok.");
        expr
    }
}

impl Drop for ServiceUsers {
    /// A test that failed before [`ServiceUsers::delete`] still leaves no users behind (started,
    /// not waited for: a drop may not block the runtime).
    fn drop(&mut self) {
        if !self.deleted {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "eval", &self.delete_expr()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
    }
}
