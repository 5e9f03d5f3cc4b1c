//! One agency node, parsed once at the edge: kind and code, e.g. `court:431003` or the village
//! committee `mediation:431003-102-05`. Every service, the console, the CLI and the audit store
//! use this one type; the wire form is [`AgencyRef`], the text form `kind:code`.

use std::fmt;
use std::str::FromStr;

use duijie_proto::is_valid_agency_code;
use duijie_proto::v1::{AgencyKind, AgencyRef};

/// One agency node on the bus: its kind and its code (1 to 64 characters of `[0-9A-Za-z-]`, so
/// usable as a routing-key segment). A value of this type is always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgencyNode {
    kind: AgencyKind,
    code: String,
}

/// Why a text or reference does not name an agency node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgencyError {
    #[error("{0:?} is not kind:code, e.g. court:431003")]
    NotKindCode(String),
    #[error("unknown agency kind {0:?}")]
    UnknownKind(String),
    #[error("agency code {0:?} must be 1 to 64 letters, digits and '-'")]
    BadCode(String),
    #[error("no agency given")]
    Missing,
}

impl AgencyNode {
    /// A node of `kind` with `code`; the kind must be specified and the code valid.
    pub fn new(kind: AgencyKind, code: impl Into<String>) -> Result<Self, AgencyError> {
        let code = code.into();
        if kind == AgencyKind::Unspecified {
            return Err(AgencyError::UnknownKind(kind.as_str().to_owned()));
        }
        if !is_valid_agency_code(&code) {
            return Err(AgencyError::BadCode(code));
        }
        Ok(Self { kind, code })
    }

    /// A node from its two stored columns (`kind` as [`AgencyKind::as_str`] writes it).
    pub fn from_parts(kind: &str, code: &str) -> Result<Self, AgencyError> {
        let k = AgencyKind::parse(kind).ok_or_else(|| AgencyError::UnknownKind(kind.to_owned()))?;
        Self::new(k, code)
    }

    /// The node a wire reference names, if it names one.
    pub fn from_ref(r: Option<&AgencyRef>) -> Result<Self, AgencyError> {
        let r = r.ok_or(AgencyError::Missing)?;
        let kind = AgencyKind::try_from(r.kind).map_err(|_| AgencyError::UnknownKind(r.kind.to_string()))?;
        Self::new(kind, r.code.as_str())
    }

    /// Whether `r` names this node.
    pub fn is(&self, r: Option<&AgencyRef>) -> bool {
        r.is_some_and(|r| r.kind == self.kind as i32 && r.code == self.code)
    }

    /// Its kind.
    pub fn kind(&self) -> AgencyKind {
        self.kind
    }

    /// Its code, e.g. `431003-102`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The `kind` column of this node.
    pub fn kind_str(&self) -> &'static str {
        self.kind.as_str()
    }
}

impl fmt::Display for AgencyNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write!, so that width flags in callers' format strings apply
        f.pad(&format!("{}:{}", self.kind.as_str(), self.code))
    }
}

impl FromStr for AgencyNode {
    type Err = AgencyError;

    /// Parses `kind:code` (white space around it, as typed or pasted, is ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (kind, code) = s.split_once(':').ok_or_else(|| AgencyError::NotKindCode(s.to_owned()))?;
        Self::from_parts(kind, code)
    }
}

impl From<&AgencyNode> for AgencyRef {
    fn from(n: &AgencyNode) -> Self {
        AgencyRef::new(n.kind, n.code.clone())
    }
}

impl TryFrom<&AgencyRef> for AgencyNode {
    type Error = AgencyError;

    fn try_from(r: &AgencyRef) -> Result<Self, Self::Error> {
        Self::from_ref(Some(r))
    }
}

/// The text form of an optional wire reference, for logs and stored columns (`""` if none,
/// `unspecified` for a kind the contract does not know). The audit log's sender and recipient
/// columns hold exactly this, and its verification compares them with it.
pub fn ref_str(a: Option<&AgencyRef>) -> String {
    a.map(|a| format!("{}:{}", AgencyKind::try_from(a.kind).map(|k| k.as_str()).unwrap_or("unspecified"), a.code))
        .unwrap_or_default()
}

impl serde::Serialize for AgencyNode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AgencyNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "sqlx")]
mod sql {
    //! Stored as text `kind:code` (e.g. the audit log's sender and recipient columns).
    use super::AgencyNode;
    use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
    use sqlx::{Decode, Encode, Postgres, Type};

    impl Type<Postgres> for AgencyNode {
        fn type_info() -> PgTypeInfo {
            <String as Type<Postgres>>::type_info()
        }
        fn compatible(ty: &PgTypeInfo) -> bool {
            <String as Type<Postgres>>::compatible(ty)
        }
    }

    impl Encode<'_, Postgres> for AgencyNode {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
            <String as Encode<Postgres>>::encode(self.to_string(), buf)
        }
    }

    impl Decode<'_, Postgres> for AgencyNode {
        fn decode(value: PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
            let s = <&str as Decode<Postgres>>::decode(value)?;
            Ok(s.parse()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_kind_code() {
        let n: AgencyNode = "mediation:431003-102".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((n.kind, n.code.as_str()), (AgencyKind::Mediation, "431003-102"));
        assert_eq!(n.to_string(), "mediation:431003-102");
        assert_eq!(" mediation:431003-102\n".parse::<AgencyNode>().as_ref(), Ok(&n));
        assert_eq!(format!("{n:>22}"), "  mediation:431003-102");
        assert_eq!(AgencyRef::from(&n), AgencyRef::new(AgencyKind::Mediation, "431003-102"));
        assert_eq!(AgencyNode::try_from(&AgencyRef::from(&n)), Ok(n));
    }

    #[test]
    fn one_validation_refuses_what_cannot_route() {
        assert_eq!("court".parse::<AgencyNode>(), Err(AgencyError::NotKindCode("court".into())));
        assert_eq!("judge:1".parse::<AgencyNode>(), Err(AgencyError::UnknownKind("judge".into())));
        assert!(matches!("court:".parse::<AgencyNode>(), Err(AgencyError::BadCode(_))));
        assert!(matches!("court:43.1".parse::<AgencyNode>(), Err(AgencyError::BadCode(_))), "a dot would split the routing key");
        assert!(matches!(format!("court:{}", "1".repeat(65)).parse::<AgencyNode>(), Err(AgencyError::BadCode(_))), "codes are capped");
        assert!(format!("court:{}", "1".repeat(64)).parse::<AgencyNode>().is_ok());
        assert!(matches!("unspecified:1".parse::<AgencyNode>(), Err(AgencyError::UnknownKind(_))));
        assert!(AgencyNode::new(AgencyKind::Unspecified, "1").is_err());
        assert_eq!(AgencyNode::from_ref(None), Err(AgencyError::Missing));
        assert!(AgencyNode::from_ref(Some(&AgencyRef { kind: 99, code: "1".into() })).is_err());
    }

    #[test]
    fn reads_from_configuration_as_text() {
        let nodes: Vec<AgencyNode> = serde_json::from_str(r#"["court:431003","mediation:431003-102"]"#).unwrap_or_default();
        assert_eq!(nodes.len(), 2);
        assert!(serde_json::from_str::<Vec<AgencyNode>>(r#"["court:4.3"]"#).is_err());
        assert_eq!(serde_json::to_string(&nodes[0]).ok().as_deref(), Some(r#""court:431003""#));
    }
}
