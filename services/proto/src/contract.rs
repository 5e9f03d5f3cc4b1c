//! Hand-written contract logic on top of the generated `duijie.v1` types.

use std::fmt;

use prost::Message as _;

use crate::v1::{
    AgencyKind, AgencyRef, Channel, Envelope, IdentityDocument, MessageKind, Money,
    envelope::Payload,
};

/// Longest agency code accepted (AMQP routing keys are at most 255 bytes).
const MAX_AGENCY_CODE_LEN: usize = 64;

/// Why an envelope breaks the wire contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// The bytes are not an encoded `Envelope`.
    #[error("cannot decode envelope: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A UUID field is not a canonical, lowercase, hyphenated, non-nil UUID.
    #[error("{field} is not a canonical lowercase hyphenated non-nil UUID: {value:?}")]
    InvalidUuid {
        /// Name of the envelope field.
        field: &'static str,
        /// The value found.
        value: String,
    },
    /// The encoded envelope is larger than
    /// [`MAX_ENVELOPE_BYTES`](crate::limits::MAX_ENVELOPE_BYTES).
    #[error("envelope of {0} bytes is larger than the contract's limit")]
    TooLarge(usize),
    /// The envelope has no payload.
    #[error("envelope has no payload")]
    MissingPayload,
    /// `kind` is unspecified or a value this version does not know.
    #[error("envelope kind is unspecified or unknown (value {0})")]
    UnknownKind(i32),
    /// `kind` does not name the payload's kind.
    #[error("envelope kind {declared:?} does not match payload kind {payload:?}")]
    KindMismatch {
        /// The kind in the header.
        declared: MessageKind,
        /// The kind of the payload.
        payload: MessageKind,
    },
    /// `sender` or `recipient` is missing.
    #[error("{role} is missing")]
    MissingAgency {
        /// `"sender"` or `"recipient"`.
        role: &'static str,
    },
    /// The agency kind of `sender` or `recipient` is unspecified or unknown.
    #[error("{role} kind is unspecified or unknown (value {value})")]
    InvalidAgencyKind {
        /// `"sender"` or `"recipient"`.
        role: &'static str,
        /// The raw enum value found.
        value: i32,
    },
    /// The agency code of `sender` or `recipient` is empty, too long or has a
    /// character other than ASCII letters, digits and '-'.
    #[error("{role} code {code:?} must be 1..=64 characters of [0-9A-Za-z-]")]
    InvalidAgencyCode {
        /// `"sender"` or `"recipient"`.
        role: &'static str,
        /// The code found.
        code: String,
    },
    /// `channel` is unspecified or unknown.
    #[error("channel is unspecified or unknown (value {0})")]
    InvalidChannel(i32),
    /// `occurred_at` is missing.
    #[error("occurred_at is missing")]
    MissingOccurredAt,
    /// `schema_version` is 0 (unset).
    #[error("schema_version is 0 (unset)")]
    MissingSchemaVersion,
    /// A field of the header or the payload breaks a bound of the contract
    /// ([`crate::limits`]): too long, an unknown enum value, a time out of range, a control
    /// character, … The field is named from the envelope down, e.g.
    /// `referral.parties[0].name`.
    #[error("{0}")]
    Content(#[from] crate::limits::Violation),
    /// DESIGN §1's sender column does not allow this agency kind to send this kind.
    #[error("a {sender:?} agency may not send {kind:?}")]
    SenderNotAllowed {
        /// The sender's agency kind.
        sender: AgencyKind,
        /// The message kind.
        kind: MessageKind,
    },
}

/// True if `code` can be an agency code: 1 to 64 characters, each an ASCII
/// letter, digit or '-' (so never a '.', which separates routing-key segments).
pub fn is_valid_agency_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_AGENCY_CODE_LEN
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Checks that `value` is a UUID in canonical lowercase hyphenated form (as
/// `uuid::Uuid::to_string` writes it) and not the nil UUID.
fn check_uuid(field: &'static str, value: &str) -> Result<(), ContractError> {
    let ok = value.len() == 36
        && !value.bytes().any(|b| b.is_ascii_uppercase())
        && uuid::Uuid::try_parse(value).is_ok_and(|u| !u.is_nil());
    if ok {
        Ok(())
    } else {
        Err(ContractError::InvalidUuid {
            field,
            value: value.to_owned(),
        })
    }
}

/// Checks presence, kind and code of the sender or recipient.
fn check_agency(role: &'static str, agency: Option<&AgencyRef>) -> Result<(), ContractError> {
    let agency = agency.ok_or(ContractError::MissingAgency { role })?;
    match AgencyKind::try_from(agency.kind) {
        Ok(AgencyKind::Unspecified) | Err(_) => {
            return Err(ContractError::InvalidAgencyKind {
                role,
                value: agency.kind,
            });
        }
        Ok(_) => {}
    }
    if !is_valid_agency_code(&agency.code) {
        return Err(ContractError::InvalidAgencyCode {
            role,
            code: agency.code.clone(),
        });
    }
    Ok(())
}

impl Payload {
    /// The message kind of this payload.
    pub fn kind(&self) -> MessageKind {
        match self {
            Payload::Referral(_) => MessageKind::Referral,
            Payload::Amendment(_) => MessageKind::Amendment,
            Payload::Cancellation(_) => MessageKind::Cancellation,
            Payload::SupervisionNotice(_) => MessageKind::SupervisionNotice,
            Payload::Receipt(_) => MessageKind::Receipt,
            Payload::Accept(_) => MessageKind::Accept,
            Payload::Reject(_) => MessageKind::Reject,
            Payload::Redirect(_) => MessageKind::Redirect,
            Payload::Assignment(_) => MessageKind::Assignment,
            Payload::Escalation(_) => MessageKind::Escalation,
            Payload::Progress(_) => MessageKind::Progress,
            Payload::InfoRequest(_) => MessageKind::InfoRequest,
            Payload::ExtensionRequest(_) => MessageKind::ExtensionRequest,
            Payload::Outcome(_) => MessageKind::Outcome,
            Payload::ConfirmationRequest(_) => MessageKind::ConfirmationRequest,
            Payload::ConfirmationDecision(_) => MessageKind::ConfirmationDecision,
            Payload::AgreementRecognition(_) => MessageKind::AgreementRecognition,
            Payload::ReconciliationReview(_) => MessageKind::ReconciliationReview,
            Payload::Performance(_) => MessageKind::Performance,
            Payload::FollowUp(_) => MessageKind::FollowUp,
            Payload::Closure(_) => MessageKind::Closure,
            Payload::DispositionNotice(_) => MessageKind::DispositionNotice,
            Payload::DeliveryEvidence(_) => MessageKind::DeliveryEvidence,
            Payload::DeadlineWarning(_) => MessageKind::DeadlineWarning,
            Payload::DeadlineBreached(_) => MessageKind::DeadlineBreached,
            Payload::CancellationConfirmation(_) => MessageKind::CancellationConfirmation,
        }
    }
}

/// Agencies that refer cases and receive them back (DESIGN §1).
const REFERRERS: &[AgencyKind] = &[
    AgencyKind::Court,
    AgencyKind::Procuratorate,
    AgencyKind::Police,
    AgencyKind::Petition,
];

impl MessageKind {
    /// Every specified kind, in numeric order.
    pub const ALL: [MessageKind; 26] = [
        MessageKind::Referral,
        MessageKind::Amendment,
        MessageKind::Cancellation,
        MessageKind::SupervisionNotice,
        MessageKind::Receipt,
        MessageKind::Accept,
        MessageKind::Reject,
        MessageKind::Redirect,
        MessageKind::Assignment,
        MessageKind::Escalation,
        MessageKind::Progress,
        MessageKind::InfoRequest,
        MessageKind::ExtensionRequest,
        MessageKind::Outcome,
        MessageKind::ConfirmationRequest,
        MessageKind::ConfirmationDecision,
        MessageKind::AgreementRecognition,
        MessageKind::ReconciliationReview,
        MessageKind::Performance,
        MessageKind::FollowUp,
        MessageKind::Closure,
        MessageKind::DispositionNotice,
        MessageKind::DeliveryEvidence,
        MessageKind::DeadlineWarning,
        MessageKind::DeadlineBreached,
        MessageKind::CancellationConfirmation,
    ];

    /// The snake_case name of the kind, the last segment of AMQP routing keys
    /// `<to_kind>.<to_code>.<message>`, e.g. `"referral"`,
    /// `"confirmation_decision"`; `"unspecified"` for
    /// [`MessageKind::Unspecified`].
    pub fn routing_segment(&self) -> &'static str {
        match self {
            MessageKind::Unspecified => "unspecified",
            MessageKind::Referral => "referral",
            MessageKind::Amendment => "amendment",
            MessageKind::Cancellation => "cancellation",
            MessageKind::SupervisionNotice => "supervision_notice",
            MessageKind::Receipt => "receipt",
            MessageKind::Accept => "accept",
            MessageKind::Reject => "reject",
            MessageKind::Redirect => "redirect",
            MessageKind::Assignment => "assignment",
            MessageKind::Escalation => "escalation",
            MessageKind::Progress => "progress",
            MessageKind::InfoRequest => "info_request",
            MessageKind::ExtensionRequest => "extension_request",
            MessageKind::Outcome => "outcome",
            MessageKind::ConfirmationRequest => "confirmation_request",
            MessageKind::ConfirmationDecision => "confirmation_decision",
            MessageKind::AgreementRecognition => "agreement_recognition",
            MessageKind::ReconciliationReview => "reconciliation_review",
            MessageKind::Performance => "performance",
            MessageKind::FollowUp => "follow_up",
            MessageKind::Closure => "closure",
            MessageKind::DispositionNotice => "disposition_notice",
            MessageKind::DeliveryEvidence => "delivery_evidence",
            MessageKind::DeadlineWarning => "deadline_warning",
            MessageKind::DeadlineBreached => "deadline_breached",
            MessageKind::CancellationConfirmation => "cancellation_confirmation",
        }
    }

    /// The kind whose [`routing_segment`](Self::routing_segment) is `segment`;
    /// `None` for an unknown segment or `"unspecified"`.
    pub fn from_routing_segment(segment: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.routing_segment() == segment)
    }

    /// The agency kinds that may send this kind, after DESIGN §1's "sent by"
    /// column ("the referring agency" = court, procuratorate, police or
    /// petition). Not enforced by [`Envelope::check`]; see
    /// [`Envelope::check_sender_kind`].
    pub fn allowed_senders(&self) -> &'static [AgencyKind] {
        match self {
            MessageKind::Unspecified => &[],
            MessageKind::Referral
            | MessageKind::Amendment
            | MessageKind::Cancellation
            | MessageKind::SupervisionNotice
            | MessageKind::DispositionNotice => REFERRERS,
            MessageKind::Receipt
            | MessageKind::Accept
            | MessageKind::Reject
            | MessageKind::Redirect
            | MessageKind::Assignment
            | MessageKind::Escalation
            | MessageKind::Progress
            | MessageKind::InfoRequest
            | MessageKind::ExtensionRequest
            | MessageKind::Outcome
            | MessageKind::ConfirmationRequest
            | MessageKind::Performance
            | MessageKind::FollowUp
            | MessageKind::Closure
            | MessageKind::CancellationConfirmation => &[AgencyKind::Mediation],
            MessageKind::ConfirmationDecision => &[AgencyKind::Court],
            MessageKind::AgreementRecognition => &[AgencyKind::Police],
            MessageKind::ReconciliationReview => &[AgencyKind::Procuratorate],
            MessageKind::DeliveryEvidence
            | MessageKind::DeadlineWarning
            | MessageKind::DeadlineBreached => &[AgencyKind::Bus],
        }
    }
}

impl fmt::Display for MessageKind {
    /// Writes the [`routing_segment`](MessageKind::routing_segment).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.routing_segment())
    }
}

impl AgencyKind {
    /// Every specified agency kind, in numeric order.
    pub const ALL: [AgencyKind; 7] = [
        AgencyKind::Court,
        AgencyKind::Procuratorate,
        AgencyKind::Police,
        AgencyKind::Petition,
        AgencyKind::Mediation,
        AgencyKind::Bus,
        AgencyKind::Supervisor,
    ];

    /// Lowercase name used in routing keys, configuration and agency ids
    /// (`court:431003`): `"court"`, `"procuratorate"`, `"police"`,
    /// `"petition"`, `"mediation"`, `"bus"`; `"unspecified"` for
    /// [`AgencyKind::Unspecified`].
    pub fn as_str(&self) -> &'static str {
        match self {
            AgencyKind::Unspecified => "unspecified",
            AgencyKind::Court => "court",
            AgencyKind::Procuratorate => "procuratorate",
            AgencyKind::Police => "police",
            AgencyKind::Petition => "petition",
            AgencyKind::Mediation => "mediation",
            AgencyKind::Bus => "bus",
            AgencyKind::Supervisor => "supervisor",
        }
    }

    /// The kind named `s` (as [`as_str`](Self::as_str) writes it); `None` for
    /// anything else, including `"unspecified"`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AgencyKind {
    /// Writes [`as_str`](AgencyKind::as_str).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Channel {
    /// Lowercase name for logs and metrics labels: `"court"` (诉调),
    /// `"police"` (警调), `"petition"` (访调), `"procuratorate"` (检调),
    /// `"self_intake"` (自行受理); `"unspecified"` otherwise.
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Unspecified => "unspecified",
            Channel::Court => "court",
            Channel::Police => "police",
            Channel::Petition => "petition",
            Channel::Procuratorate => "procuratorate",
            Channel::SelfIntake => "self_intake",
        }
    }
}

impl AgencyRef {
    /// An agency reference of `kind` with `code`.
    pub fn new(kind: AgencyKind, code: impl Into<String>) -> Self {
        Self {
            kind: kind as i32,
            code: code.into(),
        }
    }

    /// Parses `"<kind>:<code>"`, e.g. `"mediation:431003-102"`; `None` if the
    /// kind is unknown or the code invalid (see [`is_valid_agency_code`]).
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, code) = s.split_once(':')?;
        let kind = AgencyKind::parse(kind)?;
        is_valid_agency_code(code).then(|| Self::new(kind, code))
    }
}

impl fmt::Display for AgencyRef {
    /// Writes `"<kind>:<code>"`, e.g. `court:431003`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind().as_str(), self.code)
    }
}

impl Money {
    /// An amount in Chinese yuan given in fen (分), e.g. `Money::cny(12_345)`
    /// is ¥123.45.
    pub fn cny(fen: i64) -> Self {
        Self {
            currency: "CNY".to_owned(),
            minor_units: fen,
        }
    }
}

impl IdentityDocument {
    /// The document number masked for views and logs: the first and last four
    /// characters of a number of 12 or more characters (e.g.
    /// `4310**********1234`), the first and last one of 4 to 11 characters,
    /// all masked when shorter.
    pub fn masked_number(&self) -> String {
        let chars: Vec<char> = self.number.chars().collect();
        let keep = match chars.len() {
            n if n >= 12 => 4,
            n if n >= 4 => 1,
            _ => 0,
        };
        chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < keep || (keep > 0 && i + keep >= chars.len()) {
                    *c
                } else {
                    '*'
                }
            })
            .collect()
    }
}

impl fmt::Debug for IdentityDocument {
    /// Like a derived `Debug`, but the protected number is masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityDocument")
            .field("document_type", &self.document_type())
            .field("number", &self.masked_number())
            .finish()
    }
}

/// The first segment of the routing key of a message a body sends itself (recorded only).
pub const RECORD_PREFIX: &str = "record";

/// A parsed AMQP routing key `<recipient kind>.<recipient code>.<message kind>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutingKey {
    /// Kind of the recipient agency.
    pub recipient_kind: AgencyKind,
    /// Code of the recipient agency.
    pub recipient_code: String,
    /// Kind of the message.
    pub kind: MessageKind,
}

impl RoutingKey {
    /// Parses a routing key such as `mediation.431003-102.referral`; `None`
    /// unless it has exactly three segments, a known agency kind, a valid
    /// agency code and a known message kind.
    pub fn parse(key: &str) -> Option<Self> {
        let mut parts = key.split('.');
        let recipient_kind = AgencyKind::parse(parts.next()?)?;
        let recipient_code = parts.next()?;
        let kind = MessageKind::from_routing_segment(parts.next()?)?;
        if parts.next().is_some() || !is_valid_agency_code(recipient_code) {
            return None;
        }
        Some(Self {
            recipient_kind,
            recipient_code: recipient_code.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for RoutingKey {
    /// Writes `<recipient kind>.<recipient code>.<message kind>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.recipient_kind.as_str(),
            self.recipient_code,
            self.kind.routing_segment()
        )
    }
}

impl Envelope {
    /// Sets `payload` and makes `kind` agree with it (builder style).
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.set_payload(payload);
        self
    }

    /// Sets `payload` and makes `kind` agree with it.
    pub fn set_payload(&mut self, payload: Payload) {
        self.set_kind(payload.kind());
        self.payload = Some(payload);
    }

    /// The kind of the payload, if there is one.
    pub fn payload_kind(&self) -> Option<MessageKind> {
        self.payload.as_ref().map(Payload::kind)
    }

    /// Validates the envelope header:
    ///
    /// * `message_id` and `case_id` are canonical lowercase hyphenated non-nil
    ///   UUIDs; `causation_id` is empty or one;
    /// * a payload is present and `kind` equals its kind;
    /// * `sender` and `recipient` are present, of a specified kind, with codes
    ///   of 1..=64 characters of `[0-9A-Za-z-]` (no dots: codes are
    ///   routing-key segments);
    /// * `channel` is specified, `occurred_at` is present and `schema_version`
    ///   is not 0;
    /// * the header and the payload keep within the contract's bounds
    ///   ([`crate::limits`]: lengths, list sizes, enum values, times between 2000 and
    ///   2100, ISO 4217 currencies, no control characters or bidirectional controls in
    ///   codes and names, unique party ids, consents naming parties).
    ///
    /// What a field must say for a given step is the services' to check; nor does it
    /// apply the sender column of DESIGN §1 (see [`check_sender_kind`](Self::check_sender_kind)).
    pub fn check(&self) -> Result<(), ContractError> {
        check_uuid("message_id", &self.message_id)?;
        check_uuid("case_id", &self.case_id)?;
        if !self.causation_id.is_empty() {
            check_uuid("causation_id", &self.causation_id)?;
        }
        let payload_kind = self
            .payload
            .as_ref()
            .map(Payload::kind)
            .ok_or(ContractError::MissingPayload)?;
        let declared = match MessageKind::try_from(self.kind) {
            Ok(MessageKind::Unspecified) | Err(_) => {
                return Err(ContractError::UnknownKind(self.kind));
            }
            Ok(kind) => kind,
        };
        if declared != payload_kind {
            return Err(ContractError::KindMismatch {
                declared,
                payload: payload_kind,
            });
        }
        check_agency("sender", self.sender.as_ref())?;
        check_agency("recipient", self.recipient.as_ref())?;
        match Channel::try_from(self.channel) {
            Ok(Channel::Unspecified) | Err(_) => {
                return Err(ContractError::InvalidChannel(self.channel));
            }
            Ok(_) => {}
        }
        if self.occurred_at.is_none() {
            return Err(ContractError::MissingOccurredAt);
        }
        if self.schema_version == 0 {
            return Err(ContractError::MissingSchemaVersion);
        }
        crate::limits::check_header(self)?;
        if let Some(payload) = &self.payload {
            crate::limits::check_payload(payload).map_err(|v| v.within(payload_kind.routing_segment()))?;
        }
        Ok(())
    }

    /// Checks DESIGN §1's "sent by" column: the sender's agency kind may send
    /// this kind of message (see [`MessageKind::allowed_senders`]). Whether
    /// the sender is who it claims to be is for the caller's identity check.
    pub fn check_sender_kind(&self) -> Result<(), ContractError> {
        let sender = self
            .sender
            .as_ref()
            .ok_or(ContractError::MissingAgency { role: "sender" })?
            .kind();
        let kind = self.kind();
        // A mediation body hands a case it holds to another one with a forwarded referral, and
        // registers a case it took in itself with a referral to itself.
        let own = matches!(&self.payload, Some(Payload::Referral(r)) if r.forwarded.is_some() || r.intake.is_some());
        if kind.allowed_senders().contains(&sender) || (own && sender == AgencyKind::Mediation) {
            Ok(())
        } else {
            Err(ContractError::SenderNotAllowed { sender, kind })
        }
    }

    /// The AMQP routing key `<recipient kind>.<recipient code>.<message kind>`,
    /// e.g. `mediation.431003-102.referral`, after [`check`](Self::check)
    /// accepted the envelope.
    ///
    /// A message a body sends itself (a self-accepted case, where the body is both ends) has
    /// no one to deliver it to: it is published as `record.<kind>.<code>.<message kind>`, which
    /// only the audit tap binds, so it is recorded and goes nowhere else.
    pub fn routing_key(&self) -> Result<String, ContractError> {
        self.check()?;
        let recipient = self
            .recipient
            .as_ref()
            .ok_or(ContractError::MissingAgency { role: "recipient" })?;
        let key = RoutingKey {
            recipient_kind: recipient.kind(),
            recipient_code: recipient.code.clone(),
            kind: self.kind(),
        };
        if self.sender.as_ref() == Some(recipient) {
            return Ok(format!("{RECORD_PREFIX}.{key}"));
        }
        Ok(key.to_string())
    }

    /// Decodes an encoded envelope and [`check`](Self::check)s it; bytes beyond
    /// [`MAX_ENVELOPE_BYTES`](crate::limits::MAX_ENVELOPE_BYTES) are refused undecoded.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, ContractError> {
        if bytes.len() > crate::limits::MAX_ENVELOPE_BYTES {
            return Err(ContractError::TooLarge(bytes.len()));
        }
        let envelope = Self::decode(bytes)?;
        envelope.check()?;
        Ok(envelope)
    }
}
