//! The web console in front of a [`Stack`], driven by real headless Chromium through
//! ChromeDriver (Debian's `chromium` and `chromium-driver`; `scripts/test.sh` installs them).
//! Every page visited can be saved as a screenshot under `target/artifacts/browser/<test>/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use duijie_domain::AgencyNode;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::stack::Stack;
use crate::wait_until;

/// Starts the console (demo sign-in) on port 0 for `stack`, with a random session secret.
pub async fn start_console(stack: &Stack) -> anyhow::Result<duijie_console::Running> {
    start_console_with(stack, duijie_console::SessionConfig::default()).await
}

/// Starts the console (demo sign-in) on port 0 for `stack` with these session settings.
pub async fn start_console_with(stack: &Stack, session: duijie_console::SessionConfig) -> anyhow::Result<duijie_console::Running> {
    let pki = stack.pki()?;
    let cfg = duijie_console::ConsoleConfig {
        listen: "127.0.0.1:0".parse()?,
        endpoints: stack.endpoints()?,
        pki: pki.dir().to_path_buf(),
        sign_in: duijie_console::SignIn::Demo,
        tls: None,
        // The stack's own copy, which a test may edit (an agency added while running).
        directory: stack.directory_file(),
        directory_reload_ms: Duration::from_millis(200),
        grace_ms: Duration::from_secs(2),
        session,
        metrics: duijie_common::metrics::MetricsConfig { listen: Some("127.0.0.1:0".parse()?) },
    };
    duijie_console::start(cfg, stack.bus.shutdown.child_token()).await
}

/// Signs in to the demo console at `addr` as `who` with the sign-in form, as a browser does, and
/// returns the `Cookie` header value that carries the signed session (`duijie_as=…`).
pub async fn sign_in(addr: std::net::SocketAddr, who: &AgencyNode) -> anyhow::Result<String> {
    let (status, resp) = http(addr, "POST", "/signin", &[], &format!("as={who}")).await?;
    anyhow::ensure!(status == 303, "sign-in as {who} answered {status}: {resp}");
    set_cookie(&resp).with_context(|| format!("no session cookie in the sign-in answer: {resp}"))
}

/// The `name=value` of the first `Set-Cookie` header of a raw HTTP response.
pub fn set_cookie(resp: &str) -> Option<String> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .and_then(|(_, v)| v.split(';').next())
        .map(|v| v.trim().to_owned())
}

/// The value of header `name` in a raw HTTP response.
pub fn header(resp: &str, name: &str) -> Option<String> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
}

/// One HTTP/1.1 request to the demo console: (status, the whole response as text). A POST
/// without a `Content-Type` header is sent as a form.
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    // A POST is a form unless the caller says otherwise (the console's forms and the lookup's JSON).
    if method == "POST" && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

/// A headless Chromium session against the console at `base`.
pub struct Browser {
    pub client: Client,
    pub base: String,
    driver: tokio::process::Child,
    artifacts: PathBuf,
    shots: usize,
    profile: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Browser {
    /// Starts ChromeDriver and a Chromium session; screenshots go to
    /// `target/artifacts/browser/<name>/`.
    pub async fn start(base: &str, name: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver (Debian package chromium-driver; scripts/test.sh installs it)")?;
        wait_until("chromedriver to listen", Duration::from_secs(20), || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok())
        })
        .await?;
        let profile = std::env::temp_dir().join(format!("duijie-chromium-{}", uuid::Uuid::new_v4()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-quic", "--no-first-run", "--window-size=1280,1800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("starting a Chromium session")?;
        let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts/browser").join(name);
        let _ = std::fs::remove_dir_all(&artifacts);
        std::fs::create_dir_all(&artifacts)?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned(), driver, artifacts, shots: 0, profile })
    }

    /// Opens `path` of the console and checks the page ran without script errors.
    pub async fn goto(&self, path: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("{}{path}", self.base)).await?;
        self.no_script_errors().await
    }

    /// The page's script errors (collected by the console's first script) must be none.
    pub async fn no_script_errors(&self) -> anyhow::Result<()> {
        let errors = self.client.execute("return window.__jsErrors || null;", vec![]).await?;
        anyhow::ensure!(errors == json!([]), "script errors on {}: {errors}", self.client.current_url().await?);
        Ok(())
    }

    /// Saves a screenshot of the page as `<nn>-<name>.png`, returns its path.
    pub async fn shot(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.shots += 1;
        let path = self.artifacts.join(format!("{:02}-{name}.png", self.shots));
        std::fs::write(&path, self.client.screenshot().await?)?;
        Ok(path)
    }

    /// Signs in as `who` from the sign-in page (demo mode), as a person would.
    pub async fn sign_in(&self, who: &AgencyNode) -> anyhow::Result<()> {
        self.client.delete_all_cookies().await?;
        self.goto("/signin").await?;
        self.click(&format!("#signin-{}-{}", who.kind().as_str(), who.code())).await?;
        let shown = self.text("#whoami").await?;
        anyhow::ensure!(shown.contains(&who.to_string()), "signed in as {shown:?}, wanted {who}");
        self.no_script_errors().await
    }

    /// Clicks a link or a submit button and waits for the page it leads to: WebDriver's click
    /// can return while the old page is still shown.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.client.execute("window.__duijieOldPage = true;", vec![]).await?;
        self.client.find(Locator::Css(css)).await.with_context(|| format!("no {css}"))?.click().await?;
        let client = self.client.clone();
        wait_until(&format!("the page after clicking {css}"), Duration::from_secs(30), || {
            let c = client.clone();
            async move {
                let loaded = c.execute("return !window.__duijieOldPage && document.readyState === 'complete';", vec![]).await?;
                Ok(loaded == json!(true))
            }
        })
        .await?;
        self.no_script_errors().await
    }

    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.client.find(Locator::Css(css)).await.with_context(|| format!("no {css}"))?.text().await?)
    }

    pub async fn exists(&self, css: &str) -> anyhow::Result<bool> {
        Ok(!self.client.find_all(Locator::Css(css)).await?.is_empty())
    }

    /// Types `value` into the field `css` (replacing what is there).
    pub async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let el = self.client.find(Locator::Css(css)).await.with_context(|| format!("no {css}"))?;
        el.clear().await?;
        el.send_keys(value).await?;
        Ok(())
    }

    pub async fn select(&self, css: &str, value: &str) -> anyhow::Result<()> {
        self.client.find(Locator::Css(css)).await.with_context(|| format!("no {css}"))?.select_by_value(value).await?;
        Ok(())
    }

    /// The value property of a field.
    pub async fn value(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.client.find(Locator::Css(css)).await.with_context(|| format!("no {css}"))?.prop("value").await?.unwrap_or_default())
    }

    /// Reloads `path` until `css` matches something (a message crossing the bus), up to 30 s.
    pub async fn reload_until(&self, path: &str, css: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.goto(path).await?;
            if self.exists(css).await? {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{css} never appeared on {path}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Ends the session and ChromeDriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
        Ok(())
    }
}
