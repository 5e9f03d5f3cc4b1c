//! Bounds on what a message may carry: every string, list, number, enum value and timestamp of
//! every payload, and the text rules (no control characters, no bidirectional overrides).
//!
//! They are part of the contract, not of one service: the gRPC edge of every agency service
//! checks a request against them (naming the field, `INVALID_ARGUMENT`), and every receiver on
//! the bus — agency inboxes, the audit store, the history a handed-on case carries — checks each
//! envelope against them in [`Envelope::check`](crate::v1::Envelope::check), so nothing a sender
//! could not have sent through the API is applied or recorded. What a field must say for a
//! given step (a signer's name, a disposition a kind of agency may give, an identity number's
//! check digit) is the services' and the domain's to check; here is only what no message may
//! ever carry.
//!
//! Lengths are counted in characters (Unicode scalar values); a Chinese character is one.

use std::collections::HashSet;

use crate::v1::envelope::Payload;
use crate::v1::{self as pb, outcome};

/// The largest request a gRPC service decodes (512 KiB, an eighth of tonic's default of 4 MiB).
/// A referral at every limit below, all of its text Chinese (3 bytes a character), fits with
/// room to spare (the unit test `a_referral_at_every_limit_fits_in_a_request` holds it to that).
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// The largest envelope a bus consumer decodes. Larger than a request: a case handed on carries
/// its history (every envelope so far) inside its forwarded referral.
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;

/// A case code (案件编码), e.g. `JF-431003-2026-000123`.
pub const MAX_CASE_CODE: usize = 64;
/// A party's id within its case (`p1`).
pub const MAX_PARTY_ID: usize = 32;
/// Identifiers and document numbers: a client request id, a file or document number, a
/// mediator's number, a version.
pub const MAX_ID: usize = 128;
/// A person's or an organisation's name, a position.
pub const MAX_NAME: usize = 100;
/// A phone number or other contact.
pub const MAX_CONTACT: usize = 64;
/// An address.
pub const MAX_ADDRESS: usize = 200;
/// An identity document's number.
pub const MAX_IDENTITY_NUMBER: usize = 32;
/// A short label: cause of action, file name, media type, a changed field's name.
pub const MAX_LABEL: usize = 256;
/// A legal basis as cited.
pub const MAX_BASIS: usize = 500;
/// One claim, term of an agreement or question.
pub const MAX_ITEM: usize = 500;
/// Free text: facts, notes, reasons, summaries, explanations, instructions.
pub const MAX_TEXT: usize = 10_000;
/// Where an attachment's bytes are (a URI).
pub const MAX_LOCATION: usize = 1_024;
/// W3C `traceparent` and `tracestate`.
pub const MAX_TRACE: usize = 512;

/// Parties of one referral (a collective labour dispute can have dozens).
pub const MAX_PARTIES: usize = 100;
/// Claims, terms or questions of one message.
pub const MAX_ITEMS: usize = 50;
/// Attachments of one message.
pub const MAX_ATTACHMENTS: usize = 20;
/// Co-mediators of one assignment.
pub const MAX_MEDIATORS: usize = 20;
/// Field names an amendment lists as changed.
pub const MAX_CHANGED_FIELDS: usize = 32;
/// Envelopes in the history of a handed-on case.
pub const MAX_HISTORY: usize = 1_000;

/// The largest amount, in minor units (10^15 fen: ¥10 trillion, beyond any dispute).
pub const MAX_MINOR_UNITS: i64 = 1_000_000_000_000_000;
/// The largest attachment (1 TiB).
pub const MAX_ATTACHMENT_BYTES: u64 = 1 << 40;
/// The longest extension one request may ask for (the legal caps are 10 to 30 days; a year is
/// a sanity bound, not a legal rule).
pub const MAX_EXTENSION_DAYS: u32 = 365;
/// Mediation sessions one progress report may count.
pub const MAX_SESSIONS: u32 = 1_000;
/// Days a deadline may have been extended by in all.
pub const MAX_EXTENDED_DAYS: u32 = 3_650;

/// The earliest time a message may name: 2000-01-01T00:00:00Z.
pub const MIN_TIME_SECONDS: i64 = 946_684_800;
/// The latest time a message may name: 2100-12-31T23:59:59Z.
pub const MAX_TIME_SECONDS: i64 = 4_133_980_799;
/// The longest duration a deadline notice may state (a century).
pub const MAX_DURATION_SECONDS: i64 = 100 * 366 * 86_400;

/// ISO 4217 codes of the currencies in circulation (list one, 2025), without the codes for
/// precious metals, bond-market units, fund codes, testing (`XTS`) and "no currency" (`XXX`):
/// an amount in dispute is money.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF", "BMD",
    "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
    "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD",
    "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL",
    "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// A field that breaks a bound: its path inside the message checked (e.g.
/// `parties[2].name`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Violation {
    /// Path of the field, proto field names, `[i]` for list entries.
    pub field: String,
    /// What is wrong, for the caller.
    pub message: String,
}

impl Violation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same violation with its field named inside `parent` (e.g. `referral.parties[0].name`).
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        if parent.is_empty() {
            return self;
        }
        Self { field: format!("{parent}.{}", self.field), message: self.message }
    }
}

type Checked = Result<(), Violation>;

/// A path under construction: `at("name")` is `parties[0].name` under `parties[0]`.
#[derive(Clone, Copy)]
struct Path<'a>(&'a str);

impl Path<'_> {
    fn at(self, name: &str) -> String {
        if self.0.is_empty() { name.to_owned() } else { format!("{}.{name}", self.0) }
    }
    fn item(self, name: &str, i: usize) -> String {
        self.at(&format!("{name}[{i}]"))
    }
}

/// Characters that reorder how text is displayed (Trojan Source, CVE-2021-42574): embeddings and
/// overrides U+202A–U+202E, isolates U+2066–U+2069. A case code or name holding one reads
/// differently from what it is.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// How much of the control range a kind of text may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    /// Codes and names: one line, no control character at all.
    Line,
    /// Free text: line breaks and tabs, no other control character.
    Block,
}

fn check_text(field: &str, value: &str, max: usize, kind: Text) -> Checked {
    let mut n = 0usize;
    for c in value.chars() {
        n += 1;
        if n > max {
            return Err(Violation::new(field, format!("is longer than {max} characters")));
        }
        if is_bidi_control(c) {
            return Err(Violation::new(field, format!("must not contain the bidirectional control U+{:04X}", c as u32)));
        }
        let allowed_control = kind == Text::Block && matches!(c, '\n' | '\r' | '\t');
        if c.is_control() && !allowed_control {
            return Err(Violation::new(field, format!("must not contain the control character U+{:04X}", c as u32)));
        }
    }
    Ok(())
}

/// A one-line text of at most `max` characters without control characters or bidirectional
/// controls (a code or a name); an empty one passes (whether it is required is the caller's).
pub fn check_line(field: &str, value: &str, max: usize) -> Checked {
    check_text(field, value, max, Text::Line)
}

/// Free text of at most `max` characters: line breaks and tabs allowed, no other control
/// character, no bidirectional controls.
pub fn check_block(field: &str, value: &str, max: usize) -> Checked {
    check_text(field, value, max, Text::Block)
}

/// A case code: at most [`MAX_CASE_CODE`] characters, one line.
pub fn check_case_code(field: &str, value: &str) -> Checked {
    check_line(field, value, MAX_CASE_CODE)
}

fn check_list<T>(field: &str, list: &[T], max: usize) -> Checked {
    if list.len() > max {
        return Err(Violation::new(field, format!("has {} entries; at most {max} are allowed", list.len())));
    }
    Ok(())
}

fn check_lines(p: Path<'_>, name: &str, list: &[String], max_items: usize, max_chars: usize) -> Checked {
    check_list(&p.at(name), list, max_items)?;
    list.iter().enumerate().try_for_each(|(i, s)| check_block(&p.item(name, i), s, max_chars))
}

/// An enum field: a value of the contract's enum (`UNSPECIFIED` passes; whether the field is
/// required is the caller's), never a number this version does not know.
fn check_enum<E: TryFrom<i32>>(field: &str, value: i32) -> Checked {
    if E::try_from(value).is_err() {
        return Err(Violation::new(field, format!("{value} is not a value of the field's enum")));
    }
    Ok(())
}

/// A time between 2000-01-01 and 2100-12-31 with nanoseconds in 0..1e9.
pub fn check_time(field: &str, t: Option<&prost_types::Timestamp>) -> Checked {
    let Some(t) = t else { return Ok(()) };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Violation::new(field, "nanos must be 0 to 999,999,999"));
    }
    if !(MIN_TIME_SECONDS..=MAX_TIME_SECONDS).contains(&t.seconds) {
        return Err(Violation::new(field, "must be between 2000-01-01 and 2100-12-31"));
    }
    Ok(())
}

fn check_duration(field: &str, d: Option<&prost_types::Duration>) -> Checked {
    let Some(d) = d else { return Ok(()) };
    let same_sign = (d.seconds >= 0 && d.nanos >= 0) || (d.seconds <= 0 && d.nanos <= 0);
    if d.nanos.unsigned_abs() >= 1_000_000_000 || !same_sign {
        return Err(Violation::new(field, "nanos must be within ±999,999,999 and of the seconds' sign"));
    }
    if d.seconds.unsigned_abs() > MAX_DURATION_SECONDS.unsigned_abs() {
        return Err(Violation::new(field, "must be within a century"));
    }
    Ok(())
}

/// An amount of money: an ISO 4217 currency ([`CURRENCIES`]) and 0 to [`MAX_MINOR_UNITS`]
/// minor units.
fn check_money(p: Path<'_>, m: Option<&pb::Money>) -> Checked {
    let Some(m) = m else { return Ok(()) };
    if !CURRENCIES.contains(&m.currency.as_str()) {
        return Err(Violation::new(p.at("currency"), format!("{:?} is not an ISO 4217 currency code (e.g. CNY)", m.currency)));
    }
    if !(0..=MAX_MINOR_UNITS).contains(&m.minor_units) {
        return Err(Violation::new(p.at("minor_units"), format!("must be 0 to {MAX_MINOR_UNITS}")));
    }
    Ok(())
}

fn check_agency_ref(p: Path<'_>, a: Option<&pb::AgencyRef>) -> Checked {
    let Some(a) = a else { return Ok(()) };
    check_enum::<pb::AgencyKind>(&p.at("kind"), a.kind)?;
    if !a.code.is_empty() && !crate::is_valid_agency_code(&a.code) {
        return Err(Violation::new(p.at("code"), "must be 1 to 64 characters of [0-9A-Za-z-]"));
    }
    Ok(())
}

fn check_digest_hex(field: &str, hex: &str) -> Checked {
    let digest = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex.is_empty() && !digest {
        return Err(Violation::new(field, "must be a SHA-256 digest: 64 hexadecimal digits"));
    }
    Ok(())
}

fn check_attachment(p: Path<'_>, a: Option<&pb::AttachmentDigest>) -> Checked {
    let Some(a) = a else { return Ok(()) };
    check_line(&p.at("name"), &a.name, MAX_LABEL)?;
    check_line(&p.at("media_type"), &a.media_type, MAX_LABEL)?;
    check_digest_hex(&p.at("sha256_hex"), &a.sha256_hex)?;
    if a.size_bytes > MAX_ATTACHMENT_BYTES {
        return Err(Violation::new(p.at("size_bytes"), format!("must be at most {MAX_ATTACHMENT_BYTES}")));
    }
    check_line(&p.at("location"), &a.location, MAX_LOCATION)
}

fn check_attachments(p: Path<'_>, name: &str, list: &[pb::AttachmentDigest]) -> Checked {
    check_list(&p.at(name), list, MAX_ATTACHMENTS)?;
    list.iter().enumerate().try_for_each(|(i, a)| check_attachment(Path(&p.item(name, i)), Some(a)))
}

fn check_clock_policy(p: Path<'_>, c: Option<&pb::ClockPolicy>) -> Checked {
    let Some(c) = c else { return Ok(()) };
    check_enum::<pb::ClockPolicyKind>(&p.at("kind"), c.kind)?;
    check_line(&p.at("legal_basis"), &c.legal_basis, MAX_BASIS)?;
    check_line(&p.at("basis_version"), &c.basis_version, MAX_ID)
}

fn check_party_id(field: &str, id: &str) -> Checked {
    if id.trim().is_empty() {
        return Err(Violation::new(field, "is required"));
    }
    check_line(field, id, MAX_PARTY_ID)
}

/// Consents: each names a party id once (`parties`: the ids they may name, when known).
fn check_consents(p: Path<'_>, consents: &[pb::PartyConsent], parties: Option<&HashSet<&str>>) -> Checked {
    check_list(&p.at("consents"), consents, MAX_PARTIES)?;
    let mut seen = HashSet::new();
    for (i, c) in consents.iter().enumerate() {
        let at = p.item("consents", i);
        let c_path = Path(&at);
        check_party_id(&c_path.at("party_id"), &c.party_id)?;
        if parties.is_some_and(|ids| !ids.contains(c.party_id.as_str())) {
            return Err(Violation::new(c_path.at("party_id"), format!("{:?} is not the id of a party of the referral", c.party_id)));
        }
        if !seen.insert(c.party_id.as_str()) {
            return Err(Violation::new(c_path.at("party_id"), format!("party {:?} has consented twice", c.party_id)));
        }
        check_time(&c_path.at("consented_at"), c.consented_at.as_ref())?;
        check_enum::<pb::ConsentMethod>(&c_path.at("method"), c.method)?;
    }
    Ok(())
}

fn check_party(p: Path<'_>, party: &pb::Party) -> Checked {
    check_party_id(&p.at("party_id"), &party.party_id)?;
    check_enum::<pb::PartyRole>(&p.at("role"), party.role)?;
    check_enum::<pb::PartyType>(&p.at("party_type"), party.party_type)?;
    check_line(&p.at("name"), &party.name, MAX_NAME)?;
    if let Some(id) = &party.identity {
        check_enum::<pb::IdDocumentType>(&p.at("identity.document_type"), id.document_type)?;
        check_line(&p.at("identity.number"), &id.number, MAX_IDENTITY_NUMBER)?;
    }
    check_line(&p.at("contact"), &party.contact, MAX_CONTACT)?;
    check_line(&p.at("address"), &party.address, MAX_ADDRESS)?;
    check_line(&p.at("representative"), &party.representative, MAX_NAME)?;
    // Sealed identity, contact and address (their bounds above, plus AES-GCM's 29 bytes).
    if party.sealed.len() > MAX_SEALED_PARTY {
        return Err(Violation::new(p.at("sealed"), format!("must be at most {MAX_SEALED_PARTY} bytes")));
    }
    Ok(())
}

/// A party's sealed data at most (identity, contact and address at their limits, in UTF-8,
/// with the sealing's overhead).
pub const MAX_SEALED_PARTY: usize = 4096;

/// A referral's bounds (fields relative to the referral): every string, list, enum, time and
/// amount; party ids unique; each consent names a party of the referral, once.
pub fn check_referral(r: &pb::Referral) -> Checked {
    let p = Path("");
    check_line("legal_basis", &r.legal_basis, MAX_BASIS)?;
    check_enum::<pb::ReferralMode>("mode", r.mode)?;
    check_line("source_reference", &r.source_reference, MAX_ID)?;
    check_time("registered_at", r.registered_at.as_ref())?;
    check_list("parties", &r.parties, MAX_PARTIES)?;
    let mut ids = HashSet::new();
    for (i, party) in r.parties.iter().enumerate() {
        let at = p.item("parties", i);
        check_party(Path(&at), party)?;
        if !ids.insert(party.party_id.as_str()) {
            return Err(Violation::new(Path(&at).at("party_id"), format!("{:?} is the id of another party too", party.party_id)));
        }
    }
    check_enum::<pb::DisputeCategory>("category", r.category)?;
    check_line("cause_of_action", &r.cause_of_action, MAX_LABEL)?;
    check_block("facts", &r.facts, MAX_TEXT)?;
    check_lines(p, "claims", &r.claims, MAX_ITEMS, MAX_ITEM)?;
    check_money(Path("amount"), r.amount.as_ref())?;
    check_attachments(p, "attachments", &r.attachments)?;
    check_consents(p, &r.consents, Some(&ids))?;
    check_clock_policy(Path("clock_policy"), r.clock_policy.as_ref())?;
    check_line("client_request_id", &r.client_request_id, MAX_ID)?;
    check_block("note", &r.note, MAX_TEXT)?;
    if let Some(f) = &r.forwarded {
        check_agency_ref(Path("forwarded.original_referrer"), f.original_referrer.as_ref())?;
        check_agency_ref(Path("forwarded.forwarded_by"), f.forwarded_by.as_ref())?;
        check_enum::<pb::MessageKind>("forwarded.reason", f.reason)?;
        check_list("forwarded.history", &f.history, MAX_HISTORY)?;
        // Each entry is an envelope of its own, checked whole where it is replayed.
        if let Some(i) = f.history.iter().position(|h| h.len() > MAX_ENVELOPE_BYTES) {
            return Err(Violation::new(format!("forwarded.history[{i}]"), format!("is larger than {MAX_ENVELOPE_BYTES} bytes")));
        }
    }
    if let Some(i) = &r.intake {
        check_enum::<pb::IntakeSource>("intake.source", i.source)?;
        check_enum::<pb::RiskLevel>("intake.risk_level", i.risk_level)?;
        check_line("intake.received_by", &i.received_by, MAX_NAME)?;
    }
    Ok(())
}

fn check_mediator(p: Path<'_>, m: Option<&pb::Mediator>) -> Checked {
    let Some(m) = m else { return Ok(()) };
    check_line(&p.at("mediator_id"), &m.mediator_id, MAX_ID)?;
    check_line(&p.at("name"), &m.name, MAX_NAME)?;
    check_line(&p.at("contact"), &m.contact, MAX_CONTACT)
}

fn check_deadline(p: Path<'_>, d: Option<&pb::Deadline>) -> Checked {
    let Some(d) = d else { return Ok(()) };
    check_enum::<pb::TimeLimit>(&p.at("limit"), d.limit)?;
    check_enum::<pb::ClockPolicyKind>(&p.at("policy"), d.policy)?;
    check_line(&p.at("legal_basis"), &d.legal_basis, MAX_BASIS)?;
    check_line(&p.at("basis_version"), &d.basis_version, MAX_ID)?;
    check_time(&p.at("started_at"), d.started_at.as_ref())?;
    check_time(&p.at("due_at"), d.due_at.as_ref())?;
    check_line(&p.at("started_by_message_id"), &d.started_by_message_id, MAX_ID)?;
    if d.extended_days > MAX_EXTENDED_DAYS {
        return Err(Violation::new(p.at("extended_days"), format!("must be at most {MAX_EXTENDED_DAYS}")));
    }
    Ok(())
}

/// A payload's bounds, fields relative to the payload message (e.g. `signed_by` of a Receipt):
/// what [`Envelope::check`](crate::v1::Envelope::check) applies to every envelope, and the
/// gRPC edge to every case action (under the request's field, e.g. `receipt.signed_by`).
pub fn check_payload(payload: &Payload) -> Checked {
    let p = Path("");
    match payload {
        Payload::Referral(r) => check_referral(r),
        Payload::Amendment(a) => {
            check_block("reason", &a.reason, MAX_TEXT)?;
            if let Some(r) = &a.revised {
                check_referral(r).map_err(|v| v.within("revised"))?;
            }
            check_list("changed_fields", &a.changed_fields, MAX_CHANGED_FIELDS)?;
            for (i, f) in a.changed_fields.iter().enumerate() {
                check_line(&p.item("changed_fields", i), f, MAX_LABEL)?;
            }
            check_block("answer", &a.answer, MAX_TEXT)
        }
        Payload::Cancellation(c) => {
            check_enum::<pb::CancellationReason>("reason", c.reason)?;
            check_block("explanation", &c.explanation, MAX_TEXT)
        }
        Payload::SupervisionNotice(n) => {
            check_enum::<pb::SupervisionLevel>("level", n.level)?;
            check_block("instructions", &n.instructions, MAX_TEXT)?;
            check_time("respond_by", n.respond_by.as_ref())?;
            check_line("supervisor", &n.supervisor, MAX_NAME)
        }
        Payload::Receipt(r) => {
            check_line("signed_by", &r.signed_by, MAX_NAME)?;
            check_line("signer_position", &r.signer_position, MAX_NAME)?;
            check_time("signed_at", r.signed_at.as_ref())
        }
        Payload::Accept(a) => {
            check_line("accepted_by", &a.accepted_by, MAX_NAME)?;
            check_line("local_reference", &a.local_reference, MAX_ID)?;
            check_clock_policy(Path("clock_policy"), a.clock_policy.as_ref())?;
            check_block("note", &a.note, MAX_TEXT)
        }
        Payload::Reject(r) => {
            check_enum::<pb::RejectReason>("reason", r.reason)?;
            check_block("explanation", &r.explanation, MAX_TEXT)
        }
        Payload::Redirect(r) => {
            check_agency_ref(Path("to"), r.to.as_ref())?;
            check_block("reason", &r.reason, MAX_TEXT)
        }
        Payload::Assignment(a) => {
            check_mediator(Path("mediator"), a.mediator.as_ref())?;
            check_list("co_mediators", &a.co_mediators, MAX_MEDIATORS)?;
            for (i, m) in a.co_mediators.iter().enumerate() {
                check_mediator(Path(&p.item("co_mediators", i)), Some(m))?;
            }
            check_enum::<pb::MediationTier>("tier", a.tier)?;
            check_agency_ref(Path("committee"), a.committee.as_ref())?;
            check_time("first_session_at", a.first_session_at.as_ref())
        }
        Payload::Escalation(e) => {
            check_enum::<pb::MediationTier>("from_tier", e.from_tier)?;
            check_enum::<pb::MediationTier>("to_tier", e.to_tier)?;
            check_agency_ref(Path("to_agency"), e.to_agency.as_ref())?;
            check_block("reason", &e.reason, MAX_TEXT)
        }
        Payload::Progress(g) => {
            check_enum::<pb::ProgressStage>("stage", g.stage)?;
            check_block("summary", &g.summary, MAX_TEXT)?;
            if g.sessions_held > MAX_SESSIONS {
                return Err(Violation::new("sessions_held", format!("must be at most {MAX_SESSIONS}")));
            }
            check_time("next_session_at", g.next_session_at.as_ref())
        }
        Payload::InfoRequest(q) => {
            check_lines(p, "questions", &q.questions, MAX_ITEMS, MAX_ITEM)?;
            check_time("respond_by", q.respond_by.as_ref())
        }
        Payload::ExtensionRequest(x) => {
            check_enum::<pb::TimeLimit>("limit", x.limit)?;
            if x.days > MAX_EXTENSION_DAYS {
                return Err(Violation::new("days", format!("must be at most {MAX_EXTENSION_DAYS}")));
            }
            check_block("reason", &x.reason, MAX_TEXT)?;
            // Which parties the case has is the case's to say (the stored referral).
            check_consents(p, &x.consents, None)
        }
        Payload::Outcome(o) => match &o.kind {
            None => Ok(()),
            Some(outcome::Kind::Settled(s)) => {
                check_attachment(Path("settled.agreement"), s.agreement.as_ref())?;
                check_lines(Path("settled"), "terms", &s.terms, MAX_ITEMS, MAX_ITEM)?;
                check_money(Path("settled.amount"), s.amount.as_ref())?;
                check_time("settled.signed_at", s.signed_at.as_ref())
            }
            Some(outcome::Kind::Failed(f)) => {
                check_enum::<pb::FailureReason>("failed.reason", f.reason)?;
                check_block("failed.explanation", &f.explanation, MAX_TEXT)
            }
            Some(outcome::Kind::Withdrawn(w)) => {
                check_line("withdrawn.party_id", &w.party_id, MAX_PARTY_ID)?;
                check_block("withdrawn.reason", &w.reason, MAX_TEXT)
            }
        },
        Payload::ConfirmationRequest(c) => {
            check_attachment(Path("agreement"), c.agreement.as_ref())?;
            check_time("agreement_signed_at", c.agreement_signed_at.as_ref())?;
            check_list("applicant_party_ids", &c.applicant_party_ids, MAX_PARTIES)?;
            let mut seen = HashSet::new();
            for (i, id) in c.applicant_party_ids.iter().enumerate() {
                let at = p.item("applicant_party_ids", i);
                check_party_id(&at, id)?;
                if !seen.insert(id.as_str()) {
                    return Err(Violation::new(at, format!("party {id:?} is named twice")));
                }
            }
            check_attachments(p, "documents", &c.documents)?;
            check_agency_ref(Path("court"), c.court.as_ref())?;
            check_agency_ref(Path("case_referrer"), c.case_referrer.as_ref())?;
            if let Some(r) = &c.case_referral {
                check_referral(r).map_err(|v| v.within("case_referral"))?;
            }
            Ok(())
        }
        Payload::ConfirmationDecision(d) => {
            check_enum::<pb::ConfirmationDecisionKind>("decision", d.decision)?;
            check_block("reason", &d.reason, MAX_TEXT)?;
            check_line("document_number", &d.document_number, MAX_ID)?;
            check_attachment(Path("document"), d.document.as_ref())
        }
        Payload::AgreementRecognition(a) => {
            check_attachment(Path("agreement"), a.agreement.as_ref())?;
            check_line("document_number", &a.document_number, MAX_ID)?;
            check_line("recognised_by", &a.recognised_by, MAX_NAME)?;
            check_block("note", &a.note, MAX_TEXT)
        }
        Payload::ReconciliationReview(r) => {
            check_enum::<pb::ReviewConclusion>("conclusion", r.conclusion)?;
            check_attachment(Path("agreement"), r.agreement.as_ref())?;
            check_line("reviewed_by", &r.reviewed_by, MAX_NAME)?;
            check_block("reason", &r.reason, MAX_TEXT)
        }
        Payload::Performance(f) => {
            check_enum::<pb::PerformanceStatus>("status", f.status)?;
            check_money(Path("amount_performed"), f.amount_performed.as_ref())?;
            check_block("note", &f.note, MAX_TEXT)
        }
        Payload::FollowUp(f) => {
            check_enum::<pb::FollowUpMethod>("method", f.method)?;
            check_line("conducted_by", &f.conducted_by, MAX_NAME)?;
            check_block("summary", &f.summary, MAX_TEXT)?;
            check_enum::<pb::Satisfaction>("satisfaction", f.satisfaction)
        }
        Payload::Closure(c) => {
            check_enum::<pb::ClosureBasis>("basis", c.basis)?;
            check_block("summary", &c.summary, MAX_TEXT)?;
            check_line("closed_by", &c.closed_by, MAX_NAME)
        }
        Payload::DispositionNotice(d) => {
            check_enum::<pb::DispositionKind>("disposition", d.disposition)?;
            check_line("document_number", &d.document_number, MAX_ID)?;
            check_block("summary", &d.summary, MAX_TEXT)?;
            check_attachment(Path("document"), d.document.as_ref())
        }
        Payload::DeliveryEvidence(e) => {
            check_enum::<pb::EvidenceType>("evidence_type", e.evidence_type)?;
            check_line("message_id", &e.message_id, MAX_ID)?;
            check_enum::<pb::MessageKind>("message_kind", e.message_kind)?;
            check_agency_ref(Path("delivered_to"), e.delivered_to.as_ref())?;
            check_line("consumer", &e.consumer, MAX_ID)?;
            check_time("delivered_at", e.delivered_at.as_ref())?;
            check_digest_hex("envelope_sha256_hex", &e.envelope_sha256_hex)?;
            check_block("reason", &e.reason, MAX_TEXT)
        }
        Payload::DeadlineWarning(w) => {
            check_deadline(Path("deadline"), w.deadline.as_ref())?;
            check_duration("remaining", w.remaining.as_ref())
        }
        Payload::DeadlineBreached(b) => {
            check_deadline(Path("deadline"), b.deadline.as_ref())?;
            check_duration("overdue_by", b.overdue_by.as_ref())
        }
        Payload::CancellationConfirmation(c) => check_block("reason", &c.reason, MAX_TEXT),
    }
}

/// The bounds of an envelope's header beyond [`Envelope::check`](crate::v1::Envelope::check)'s
/// structure: the case code, the time, the trace context.
pub fn check_header(env: &pb::Envelope) -> Checked {
    check_case_code("case_code", &env.case_code)?;
    check_time("occurred_at", env.occurred_at.as_ref())?;
    if let Some(t) = &env.trace {
        check_line("trace.traceparent", &t.traceparent, MAX_TRACE)?;
        check_line("trace.tracestate", &t.tracestate, MAX_TRACE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn referral() -> pb::Referral {
        pb::Referral {
            parties: vec![
                pb::Party { party_id: "p1".into(), name: "张三".into(), ..Default::default() },
                pb::Party { party_id: "p2".into(), name: "李四".into(), ..Default::default() },
            ],
            consents: vec![pb::PartyConsent { party_id: "p1".into(), consented: true, ..Default::default() }],
            amount: Some(pb::Money::cny(300_000)),
            registered_at: Some(prost_types::Timestamp { seconds: 1_780_000_000, nanos: 0 }),
            facts: "双方因院墙排水问题发生争执。\n第二行".into(),
            ..Default::default()
        }
    }

    fn field_of(r: &pb::Referral) -> Option<String> {
        check_referral(r).err().map(|v| v.field)
    }

    #[test]
    fn a_plain_referral_passes() {
        assert_eq!(check_referral(&referral()), Ok(()));
    }

    #[test]
    fn what_the_fuzzer_found_is_refused_naming_the_field() {
        let with = |f: &dyn Fn(&mut pb::Referral)| {
            let mut r = referral();
            f(&mut r);
            field_of(&r)
        };
        let far = |s| Some(prost_types::Timestamp { seconds: s, nanos: 0 });
        assert_eq!(with(&|r| r.registered_at = far(146_000_000_000 * 31_557_600)), Some("registered_at".into()));
        assert_eq!(with(&|r| r.registered_at = Some(prost_types::Timestamp { seconds: 1_780_000_000, nanos: -1 })), Some("registered_at".into()));
        assert_eq!(with(&|r| r.registered_at = far(0)), Some("registered_at".into()), "1970 is before 2000");
        assert_eq!(with(&|r| r.category = 9999), Some("category".into()));
        assert_eq!(with(&|r| r.parties[1].role = 777), Some("parties[1].role".into()));
        assert_eq!(with(&|r| r.amount = Some(pb::Money { currency: String::new(), minor_units: 1 })), Some("amount.currency".into()));
        assert_eq!(with(&|r| r.amount = Some(pb::Money { currency: "XXX".into(), minor_units: 1 })), Some("amount.currency".into()));
        assert_eq!(with(&|r| r.amount = Some(pb::Money::cny(i64::MAX))), Some("amount.minor_units".into()));
        assert_eq!(with(&|r| r.amount = Some(pb::Money::cny(-1))), Some("amount.minor_units".into()));
        assert_eq!(with(&|r| r.consents[0].party_id = "nobody".into()), Some("consents[0].party_id".into()));
        assert_eq!(with(&|r| r.consents.push(r.consents[0].clone())), Some("consents[1].party_id".into()));
        assert_eq!(with(&|r| r.parties[1].party_id = "p1".into()), Some("parties[1].party_id".into()));
        assert_eq!(with(&|r| r.parties[0].name = "张\0三".into()), Some("parties[0].name".into()));
        assert_eq!(with(&|r| r.facts = "事".repeat(MAX_TEXT + 1)), Some("facts".into()));
        assert_eq!(with(&|r| r.facts = "a\u{202E}b".into()), Some("facts".into()));
        assert_eq!(with(&|r| r.claims = vec!["x".into(); MAX_ITEMS + 1]), Some("claims".into()));
        let party = |i: usize| pb::Party { party_id: format!("p{i}"), name: "某".into(), ..Default::default() };
        assert_eq!(with(&|r| r.parties = (0..10_001).map(party).collect()), Some("parties".into()));
        assert_eq!(with(&|r| r.source_reference = "(2026)湘1003民诉前调\u{2066}123号".into()), Some("source_reference".into()));
        assert_eq!(with(&|r| r.attachments = vec![pb::AttachmentDigest { sha256_hex: "zz".into(), ..Default::default() }]), Some("attachments[0].sha256_hex".into()));
        assert_eq!(with(&|r| r.forwarded = Some(pb::ForwardedCase { reason: 99, ..Default::default() })), Some("forwarded.reason".into()));
    }

    #[test]
    fn codes_and_names_are_one_line_free_text_may_break_lines() {
        assert!(check_case_code("case_code", "JF-431003-2026-000123").is_ok());
        assert!(check_case_code("case_code", &"J".repeat(4096)).is_err());
        assert!(check_case_code("case_code", "JF\u{202E}321").is_err());
        assert!(check_case_code("case_code", "JF\n1").is_err());
        assert!(check_line("name", "湖南某某建筑工程有限公司", MAX_NAME).is_ok());
        assert!(check_block("facts", "第一行\r\n\t第二行", MAX_TEXT).is_ok());
        assert!(check_block("facts", "bell\u{7}", MAX_TEXT).is_err());
        assert!(check_block("facts", "c1\u{85}", MAX_TEXT).is_err());
    }

    #[test]
    fn unknown_enum_values_in_any_payload_are_refused() {
        let p = Payload::Closure(pb::Closure { basis: 42, ..Default::default() });
        assert_eq!(check_payload(&p).map_err(|v| v.field), Err("basis".into()));
        let p = Payload::Outcome(pb::Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed { reason: 7, ..Default::default() })) });
        assert_eq!(check_payload(&p).map_err(|v| v.field), Err("failed.reason".into()));
        let p = Payload::Redirect(pb::Redirect { to: Some(pb::AgencyRef { kind: 70, code: "1".into() }), ..Default::default() });
        assert_eq!(check_payload(&p).map_err(|v| v.field), Err("to.kind".into()));
        let p = Payload::DeadlineWarning(pb::DeadlineWarning {
            remaining: Some(prost_types::Duration { seconds: 10, nanos: -5 }),
            ..Default::default()
        });
        assert_eq!(check_payload(&p).map_err(|v| v.field), Err("remaining".into()));
    }

    #[test]
    fn the_currency_list_is_iso_4217_codes_sorted_and_unique() {
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]));
        assert!(CURRENCIES.iter().all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        for c in ["CNY", "HKD", "MOP", "TWD", "USD", "EUR", "JPY"] {
            assert!(CURRENCIES.contains(&c), "{c}");
        }
        for c in ["XXX", "XTS", "XAU", "cny", ""] {
            assert!(!CURRENCIES.contains(&c), "{c}");
        }
    }

    /// The request size limit leaves room for the largest referral the field limits allow.
    #[test]
    fn a_referral_at_every_limit_fits_in_a_request() {
        let cjk = |n: usize| "调".repeat(n);
        let ascii = |n: usize| "a".repeat(n);
        let party = |i: usize| pb::Party {
            party_id: format!("{i:0>width$}", width = MAX_PARTY_ID),
            role: pb::PartyRole::Other as i32,
            party_type: pb::PartyType::Unincorporated as i32,
            name: cjk(MAX_NAME),
            identity: Some(pb::IdentityDocument { document_type: 7, number: ascii(MAX_IDENTITY_NUMBER) }),
            contact: cjk(MAX_CONTACT),
            address: cjk(MAX_ADDRESS),
            representative: cjk(MAX_NAME),
            sealed: Vec::new(),
        };
        let parties: Vec<pb::Party> = (0..MAX_PARTIES).map(party).collect();
        let time = Some(prost_types::Timestamp { seconds: MAX_TIME_SECONDS, nanos: 999_999_999 });
        let attachment = pb::AttachmentDigest {
            name: cjk(MAX_LABEL),
            media_type: ascii(MAX_LABEL),
            sha256_hex: ascii(64).replace('a', "f"),
            size_bytes: MAX_ATTACHMENT_BYTES,
            location: ascii(MAX_LOCATION),
        };
        let referral = pb::Referral {
            legal_basis: cjk(MAX_BASIS),
            mode: 7,
            source_reference: cjk(MAX_ID),
            registered_at: time,
            consents: parties
                .iter()
                .map(|p| pb::PartyConsent { party_id: p.party_id.clone(), consented: true, consented_at: time, method: 3 })
                .collect(),
            parties,
            category: 17,
            cause_of_action: cjk(MAX_LABEL),
            facts: cjk(MAX_TEXT),
            claims: vec![cjk(MAX_ITEM); MAX_ITEMS],
            amount: Some(pb::Money::cny(MAX_MINOR_UNITS)),
            attachments: vec![attachment; MAX_ATTACHMENTS],
            clock_policy: Some(pb::ClockPolicy { kind: 6, legal_basis: cjk(MAX_BASIS), basis_version: cjk(MAX_ID) }),
            client_request_id: cjk(MAX_ID),
            note: cjk(MAX_TEXT),
            forwarded: None,
            intake: Some(pb::Intake { source: 6, risk_level: 3, received_by: cjk(MAX_NAME) }),
        };
        assert_eq!(check_referral(&referral), Ok(()));
        let amendment = pb::Amendment {
            reason: cjk(MAX_TEXT),
            revised: Some(referral),
            changed_fields: vec![ascii(MAX_LABEL); MAX_CHANGED_FIELDS],
            answer: cjk(MAX_TEXT),
        };
        assert_eq!(check_payload(&Payload::Amendment(amendment.clone())), Ok(()));
        let request = pb::AmendRequest { case_id: uuid::Uuid::nil().to_string(), amendment: Some(amendment) };
        let size = request.encoded_len();
        assert!(size < MAX_REQUEST_BYTES * 9 / 10, "{size} bytes, limit {MAX_REQUEST_BYTES}");
    }
}
