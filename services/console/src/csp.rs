//! The Content-Security-Policy: only the console's own scripts and styles run, each carrying the
//! response's nonce, fresh and random per response. A script an attacker got into a page (a
//! name or a case's facts that escaped escaping one day) has no nonce and does not run; nothing
//! loads from other origins, forms post only here, and no other site may frame a page.

use rand::RngCore as _;

tokio::task_local! {
    /// The nonce of the response being rendered (set by [`crate::guard`] around each request).
    static NONCE: String;
}

/// A fresh nonce: 128 random bits, hex (a valid CSP `base64-value`).
pub fn fresh() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f` (the rest of the request) with `nonce` as the response's nonce.
pub async fn scope<F: std::future::Future>(nonce: String, f: F) -> F::Output {
    NONCE.scope(nonce, f).await
}

/// The nonce for the `<script>` and `<style>` elements of the page being rendered. Outside a
/// request (never in the console's handlers) it is empty, which no policy allows: the page's
/// scripts would not run rather than run unchecked.
pub fn nonce() -> String {
    NONCE.try_with(Clone::clone).unwrap_or_default()
}

/// The policy for a response whose elements carry `nonce`.
pub fn policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}
