//! The console's side of gRPC: one channel per (agency, service), made with that agency's own
//! certificate so the services apply their rights to the person at the desk, and the one place
//! where a service's answer becomes a message a clerk can read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use duijie_domain::AgencyNode;
use duijie_common::client::{self, Endpoints, Pki};
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::labels;

/// Channels to the services, per identity.
#[derive(Clone)]
pub struct Backend {
    endpoints: Endpoints,
    pki: Pki,
    channels: Arc<Mutex<HashMap<(String, String), Channel>>>,
}

impl Backend {
    pub fn new(endpoints: Endpoints, pki: Pki) -> Self {
        Self { endpoints, pki, channels: Arc::default() }
    }

    fn channel(&self, addr: &str, who: &AgencyNode) -> Result<Channel, UiError> {
        self.channel_as(addr, &who.to_string(), || self.pki.identity(who))
    }

    /// A channel to `addr` presenting the certificate `tls` gives, cached under `name`.
    fn channel_as(&self, addr: &str, name: &str, tls: impl FnOnce() -> anyhow::Result<duijie_common::server::TlsPem>) -> Result<Channel, UiError> {
        let key = (addr.to_owned(), name.to_owned());
        // A poisoned lock only means another request panicked while inserting; the map is
        // still a valid cache.
        let mut map = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ch) = map.get(&key) {
            return Ok(ch.clone());
        }
        let tls = tls().map_err(|e| UiError::NoCredential(format!("{e:#}")))?;
        let ch = client::channel(addr, &self.endpoints.tls_domain, &tls).map_err(UiError::Internal)?;
        map.insert(key, ch.clone());
        Ok(ch)
    }

    /// `who`'s own agency service.
    pub fn own(&self, who: &AgencyNode) -> Result<Channel, UiError> {
        let addr = self.endpoints.of(who.kind()).ok_or_else(|| UiError::Forbidden("该身份没有对应的机构服务".into()))?.to_owned();
        self.channel(&addr, who)
    }

    /// The audit service as the console itself (`service-console.pem` of the PKI directory,
    /// common name `duijie-console`): the parties' lookup, which no agency may ask. Cached under
    /// a name no agency has (an agency is always `<kind>:<code>`).
    pub fn audit_as_console(&self) -> Result<Channel, UiError> {
        let addr = self.endpoints.audit.clone();
        self.channel_as(&addr, "service console", || self.pki.service("console"))
    }

    /// The audit service, as `who`.
    pub fn audit(&self, who: &AgencyNode) -> Result<Channel, UiError> {
        let addr = self.endpoints.audit.clone();
        self.channel(&addr, who)
    }
}

/// Why a page could not do what was asked, shown to the user in Chinese.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// A service refused or failed the call.
    #[error("{0}")]
    Service(#[from] tonic::Status),
    /// The form has mistakes: (form field, message).
    #[error("form: {0:?}")]
    Form(Vec<(String, String)>),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("no credential: {0}")]
    NoCredential(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl UiError {
    /// The HTTP status of the page that shows the error.
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        use tonic::Code;
        match self {
            UiError::Service(s) => match s.code() {
                Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange => S::UNPROCESSABLE_ENTITY,
                Code::PermissionDenied | Code::Unauthenticated => S::FORBIDDEN,
                Code::NotFound => S::NOT_FOUND,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => S::SERVICE_UNAVAILABLE,
                _ => S::BAD_GATEWAY,
            },
            UiError::Form(_) => S::UNPROCESSABLE_ENTITY,
            UiError::Forbidden(_) | UiError::NoCredential(_) => S::FORBIDDEN,
            UiError::NotFound(_) => S::NOT_FOUND,
            UiError::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// One plain Chinese sentence for the banner; details stay in the log.
    pub fn message(&self) -> String {
        use tonic::Code;
        match self {
            UiError::Service(s) => match s.code() {
                Code::InvalidArgument => {
                    let fields = self.field_errors();
                    if fields.is_empty() {
                        "填写的内容有误，请检查后重新提交。".into()
                    } else {
                        format!(
                            "填写的内容有误：{}。",
                            fields.iter().map(|(f, m)| format!("{}{}", labels::field(f), m)).collect::<Vec<_>>().join("；")
                        )
                    }
                }
                Code::FailedPrecondition => {
                    format!("案件当前状态不允许此操作（{}）。请刷新页面查看最新状态。", precondition_state(s.message()))
                }
                Code::PermissionDenied => "无权查看或办理该案件。".into(),
                Code::Unauthenticated => "身份认证失败：证书无效或未被信任。".into(),
                Code::NotFound => "未找到该案件，或本机构不是该案件的当事机构。".into(),
                Code::AlreadyExists => "该案件已存在。".into(),
                Code::Unavailable if s.message().contains("audit") => {
                    "审计存证服务暂不可用，暂停接收新的移送，请稍后重试；已移送的案件不受影响。".into()
                }
                Code::Unavailable | Code::DeadlineExceeded => "服务暂时不可用，请稍后重试。".into(),
                _ => "系统出现错误，请稍后重试或联系管理员。".into(),
            },
            UiError::Form(errors) => {
                format!("填写的内容有误：{}。", errors.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("；"))
            }
            UiError::Forbidden(m) | UiError::NotFound(m) => m.clone(),
            UiError::NoCredential(_) => "本控制台没有该机构的访问证书，无法代表其办理。".into(),
            UiError::Internal(_) => "系统出现错误，请稍后重试或联系管理员。".into(),
        }
    }

    /// The field violations of an INVALID_ARGUMENT answer: (service field path, Chinese problem).
    pub fn field_errors(&self) -> Vec<(String, String)> {
        match self {
            UiError::Service(s) => s
                .get_error_details()
                .bad_request()
                .map(|b| b.field_violations.iter().map(|v| (v.field.clone(), labels::problem(&v.field, &v.description))).collect())
                .unwrap_or_default(),
            UiError::Form(errors) => errors.clone(),
            _ => Vec::new(),
        }
    }
}

/// The state named in a FAILED_PRECONDITION message (`… in state IN_MEDIATION …`), in Chinese.
fn precondition_state(message: &str) -> String {
    labels::states()
        .find(|s| message.split(|c: char| !c.is_ascii_uppercase() && c != '_').any(|w| w == *s))
        .map_or_else(|| "状态已变化".to_owned(), |s| format!("当前为“{}”", labels::state(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_plain_chinese() {
        let e = UiError::Service(tonic::Status::failed_precondition("RECEIPT is not allowed in state IN_MEDIATION"));
        assert!(e.message().contains("调解中"), "{}", e.message());
        let e = UiError::Service(tonic::Status::internal("panicked at src/lib.rs:10"));
        assert!(!e.message().contains("src/"), "no internals on screen");
    }
}
