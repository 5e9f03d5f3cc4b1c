//! The demo sign-in's session cookie: `<kind>:<code>.<expires unix s>.<HMAC-SHA256 hex>`, the
//! MAC over the agency and the expiry under the console's session secret. Whoever can write a
//! cookie for the console's host (another program on the machine, a proxy, a curl) cannot name
//! an agency or stretch a session without the secret; a tampered, unsigned or expired cookie is
//! the same as none.
//!
//! `client_certificate` sign-in keeps no cookie at all: the browser certificate of the
//! connection is the identity on every request.

use std::time::Duration;

use chrono::Utc;
use duijie_domain::AgencyNode;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use duijie_common::config::duration_ms;

/// The cookie's name.
pub const COOKIE: &str = "duijie_as";

/// A configured secret shorter than this is refused: an HMAC key one could guess signs
/// sessions for every agency.
const MIN_SECRET_BYTES: usize = 32;

/// `session:` in the console's configuration.
#[derive(Clone, Debug, Deserialize)]
pub struct SessionConfig {
    /// The HMAC key of the session cookie (`DUIJIE_SESSION__SECRET`, at least 32 bytes). None:
    /// a random one is made at start, so every session ends when the console restarts (and
    /// replicas of the console do not accept each other's cookies).
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// How long a sign-in lasts (ms); the browser is asked to sign in again after it.
    #[serde(default = "default_ttl", with = "duration_ms")]
    pub ttl_ms: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { secret: None, ttl_ms: default_ttl() }
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

/// Signs and checks session cookies.
#[derive(Clone)]
pub struct Sessions {
    /// HMAC keyed with the secret (its inner and outer states, not the secret itself).
    mac: HmacSha256,
    ttl: Duration,
    /// Served over TLS: the cookie is `Secure`.
    secure: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("ttl", &self.ttl).field("secure", &self.secure).finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<sha2::Sha256>;

impl Sessions {
    /// From the configuration; `secure` when the console serves HTTPS.
    pub fn new(cfg: &SessionConfig, secure: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(!cfg.ttl_ms.is_zero(), "session.ttl_ms must be above 0");
        let mac = match &cfg.secret {
            Some(s) => {
                anyhow::ensure!(
                    s.expose_secret().len() >= MIN_SECRET_BYTES,
                    "session.secret must be at least {MIN_SECRET_BYTES} bytes (DUIJIE_SESSION__SECRET)"
                );
                HmacSha256::new_from_slice(s.expose_secret().as_bytes())
            }
            None => {
                tracing::info!("no session.secret configured: a random one is used, sign-ins end when the console restarts");
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                HmacSha256::new_from_slice(&bytes)
            }
        }
        .map_err(|_| anyhow::anyhow!("session.secret: not a usable HMAC key"))?;
        Ok(Self { mac, ttl: cfg.ttl_ms, secure })
    }

    fn tag(&self, payload: &str) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(b"duijie-console-session-v1\0");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The cookie's value for `who`, valid until `now + ttl`.
    pub fn value_for(&self, who: &AgencyNode) -> String {
        let expires = Utc::now().timestamp().saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        self.value_until(who, expires)
    }

    fn value_until(&self, who: &AgencyNode, expires: i64) -> String {
        let payload = format!("{who}.{expires}");
        let tag = hex(&self.tag(&payload));
        format!("{payload}.{tag}")
    }

    /// The `Set-Cookie` header that signs `who` in.
    pub fn set_cookie(&self, who: &AgencyNode) -> String {
        format!("{COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}", self.value_for(who), self.ttl.as_secs(), self.secure_attr())
    }

    /// The `Set-Cookie` header that signs out.
    pub fn clear_cookie(&self) -> String {
        format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}", self.secure_attr())
    }

    fn secure_attr(&self) -> &'static str {
        if self.secure { "; Secure" } else { "" }
    }

    /// The agency a cookie value names, if its MAC is right and it has not expired.
    pub fn verify(&self, value: &str) -> Option<AgencyNode> {
        let (payload, tag) = value.rsplit_once('.')?;
        let tag = unhex(tag)?;
        let mut mac = self.mac.clone();
        mac.update(b"duijie-console-session-v1\0");
        mac.update(payload.as_bytes());
        // Constant-time: the tag is not guessable byte by byte from timings.
        mac.verify_slice(&tag).ok()?;
        let (who, expires) = payload.rsplit_once('.')?;
        let expires: i64 = expires.parse().ok()?;
        if expires <= Utc::now().timestamp() {
            return None;
        }
        who.parse().ok()
    }

    /// The signed-in agency of a request's cookies, if one cookie verifies.
    pub fn signed_in(&self, headers: &axum::http::HeaderMap) -> Option<AgencyNode> {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .find_map(|v| self.verify(v))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(secret: &str) -> Sessions {
        let cfg = SessionConfig { secret: Some(SecretString::from(secret.to_owned())), ttl_ms: Duration::from_secs(60) };
        Sessions::new(&cfg, false).unwrap_or_else(|e| panic!("{e}"))
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_cookie_names_its_agency_until_it_expires() -> anyhow::Result<()> {
        let s = sessions(SECRET);
        let court: AgencyNode = "court:431003".parse()?;
        assert_eq!(s.verify(&s.value_for(&court)), Some(court.clone()));
        let expired = s.value_until(&court, Utc::now().timestamp() - 1);
        assert_eq!(s.verify(&expired), None, "expired");
        Ok(())
    }

    #[test]
    fn tampered_unsigned_or_foreign_cookies_name_nobody() -> anyhow::Result<()> {
        let s = sessions(SECRET);
        let court: AgencyNode = "court:431003".parse()?;
        let good = s.value_for(&court);
        let (payload, tag) = good.rsplit_once('.').unwrap_or_default();
        let (_, expires) = payload.rsplit_once('.').unwrap_or_default();
        for bad in [
            "court:431003".to_owned(),
            "mediation:421000".to_owned(),
            format!("mediation:431003.{expires}.{tag}"),
            format!("court:431003.{}.{tag}", expires.parse::<i64>()? + 3600),
            format!("{payload}.{}", "0".repeat(64)),
            format!("{payload}.{}", &tag[..62]),
            format!("{payload}."),
            format!("{payload}.zz{}", &tag[2..]),
        ] {
            assert_eq!(s.verify(&bad), None, "{bad}");
        }
        // Another console's secret (or the random one before a restart).
        let other = sessions("fedcba9876543210fedcba9876543210");
        assert_eq!(other.verify(&good), None);
        Ok(())
    }

    #[test]
    fn a_short_secret_is_refused_and_the_cookie_is_strict() -> anyhow::Result<()> {
        let short = SessionConfig { secret: Some(SecretString::from("short".to_owned())), ttl_ms: Duration::from_secs(60) };
        assert!(Sessions::new(&short, false).is_err());
        let tls = Sessions::new(&SessionConfig::default(), true)?;
        let set = tls.set_cookie(&"court:431003".parse()?);
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure", "Max-Age=28800"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!Sessions::new(&SessionConfig::default(), false)?.set_cookie(&"court:431003".parse()?).contains("Secure"));
        Ok(())
    }
}
