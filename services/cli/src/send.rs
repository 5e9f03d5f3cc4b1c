//! `duijie send FILE`: a referral written by hand (JSON or YAML) sent through the referring
//! agency's service; `duijie intake FILE`: a dispute a mediation body took in itself, in the
//! same format (with `intake` in place of `to`), registered through the mediation service. The file format is a friendly form of `SubmitReferralRequest`: enum values
//! as lower snake_case names, amounts in yuan, times as RFC 3339 or dates; see
//! `services/cli/examples/referral.yaml`.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use duijie_domain::AgencyNode;
use duijie_proto::answered_case;
use duijie_proto::v1::mediation_service_client::MediationServiceClient;
use duijie_proto::v1::referrals_service_client::ReferralsServiceClient;
use duijie_proto::v1::{
    AgencyKind, AgencyRef, CaseView, ClockPolicy, ClockPolicyKind, DisputeCategory, IdDocumentType, IdentityDocument, Intake, IntakeSource,
    Money, Party, PartyConsent, PartyRole, PartyType, Referral, ReferralMode, RegisterCaseRequest, RiskLevel, SubmitReferralRequest,
};
use serde::Deserialize;

use crate::error::{CliError, CliResult, StatusContext as _};
use crate::{Ctx, output};

const FILE_HELP: &str = "\
The file (JSON or YAML; `-` reads stdin; format by extension, else JSON then YAML):

  from: court:431003               # the referring agency (court, police, petition, procuratorate)
  to: mediation:431003             # the mediation body that receives the case
  case_code: JF-431003-2026-000123 # unique for the sender
  client_request_id: ...           # optional; default derived from case_code, so re-sending is idempotent
  legal_basis: 《人民调解法》第十八条
  mode: delegated                  # delegated, entrusted, pre_litigation, police_transfer, petition_transfer,
                                   # criminal_reconciliation, other
  source_reference: (2026)湘1003民初123号   # optional
  registered_at: 2026-03-01        # RFC 3339 or a date (China time); required for court_ordinary/simplified
  parties:
    - id: p1                       # referred to by consents
      role: applicant              # applicant, respondent, plaintiff, defendant, third_party, victim, offender,
                                   # petitioner, other
      type: natural_person         # natural_person (default), legal_person, unincorporated
      name: 张三
      id_type: resident_id_card    # default resident_id_card; passport, hk_macao_permit, taiwan_permit,
                                   # foreign_permanent_resident, social_credit_code, other
      id_number: 11010519491231002X
      contact: 13800000000
      address: 湖南省郴州市北湖区…
      representative: ...          # optional
  category: neighbour              # marriage_family, neighbour, property_management, land, labour,
                                   # traffic_accident, medical, contract, private_lending, consumer, tort,
                                   # construction, requisition_demolition, environment, public_security,
                                   # minor_criminal, other
  cause_of_action: 相邻关系纠纷
  facts: 双方因院墙排水问题发生争执。
  claims: [排除妨碍]
  amount_yuan: \"3000.00\"           # decimal string or number, at most 2 decimals
  consents: [p1, p2]               # parties that consented to mediation
  clock_policy: court_ordinary     # court_ordinary, court_simplified, court_pre_filing, peoples_mediation,
                                   # petition, police
  note: ...                        # optional

For `duijie intake` (自行受理), `from` is the mediation body itself, `to` is left out,
`clock_policy` may be left out (peoples_mediation), and the file adds:

  intake:
    source: walk_in                # walk_in, hotline_148, hotline_12345, online, grid_screening,
                                   # department_transfer
    risk_level: medium             # low, medium, high
    received_by: 李接待

Prints the case id, code and state. A refused referral lists each field at fault (exit 3);
an unreadable or invalid file exits 2.";

/// `duijie send`.
#[derive(Args, Debug)]
#[command(after_help = FILE_HELP)]
pub struct SendArgs {
    /// The referral file (JSON or YAML), or `-` for stdin.
    pub file: PathBuf,
}

/// How a dispute came in, as an operator writes it (`duijie intake`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct IntakeEntry {
    pub source: String,
    pub risk_level: String,
    pub received_by: String,
}

/// A referral as an operator writes it.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ReferralFile {
    pub from: String,
    /// Required for `send`; left out for `intake`.
    #[serde(default)]
    pub to: Option<String>,
    pub case_code: String,
    #[serde(default)]
    pub client_request_id: Option<String>,
    #[serde(default)]
    pub legal_basis: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub source_reference: String,
    #[serde(default)]
    pub registered_at: Option<String>,
    pub parties: Vec<PartyEntry>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub cause_of_action: String,
    pub facts: String,
    #[serde(default)]
    pub claims: Vec<String>,
    #[serde(default)]
    pub amount_yuan: Option<Amount>,
    #[serde(default)]
    pub consents: Vec<String>,
    /// Required for `send`; `intake` defaults to peoples_mediation.
    #[serde(default)]
    pub clock_policy: Option<String>,
    #[serde(default)]
    pub note: String,
    /// Only for `intake`.
    #[serde(default)]
    pub intake: Option<IntakeEntry>,
}

/// A party as an operator writes it.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PartyEntry {
    pub id: String,
    pub role: String,
    #[serde(rename = "type", default)]
    pub party_type: Option<String>,
    pub name: String,
    #[serde(default)]
    pub id_type: Option<String>,
    #[serde(default)]
    pub id_number: Option<String>,
    #[serde(default)]
    pub contact: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub representative: String,
}

/// An amount in yuan: a decimal string (exact) or a number.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Amount {
    Int(i64),
    Float(f64),
    Text(String),
}

/// The request a file describes, and who sends it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub from: AgencyNode,
    pub request: SubmitReferralRequest,
}

/// Reads and parses a referral file (`-` = stdin).
pub fn read_file(path: &Path) -> CliResult<ReferralFile> {
    let usage = |e: String| CliError::Usage(e);
    let (text, name) = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| usage(format!("reading stdin: {e}")))?;
        (s, "stdin".to_owned())
    } else {
        let s = std::fs::read_to_string(path).map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
        (s, path.display().to_string())
    };
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => serde_json::from_str(&text).map_err(|e| usage(format!("{name}: {e}"))),
        Some("yaml" | "yml") => serde_yaml::from_str(&text).map_err(|e| usage(format!("{name}: {e}"))),
        _ => serde_json::from_str(&text).or_else(|json| {
            serde_yaml::from_str(&text).map_err(|yaml| usage(format!("{name}: neither JSON ({json}) nor YAML ({yaml})")))
        }),
    }
}

/// An enum value from its lower snake_case name (the protobuf name without its prefix); an
/// unknown name is an error naming `field` and listing the allowed names.
fn enum_value(field: &str, value: &str, prefix: &str, name_of: impl Fn(i32) -> Option<&'static str>) -> CliResult<i32> {
    let wanted = value.trim().to_ascii_lowercase().replace('-', "_");
    let mut allowed = Vec::new();
    // Values are contiguous from 1 (0 is UNSPECIFIED, never a valid choice).
    for i in 1.. {
        let Some(name) = name_of(i) else { break };
        let short = name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase();
        if short == wanted {
            return Ok(i);
        }
        allowed.push(short);
    }
    Err(CliError::Usage(format!("{field}: unknown value {value:?} (allowed: {})", allowed.join(", "))))
}

/// Yuan (`"1234.5"`, `1234`) as fen. At most two decimals, not negative.
pub fn parse_yuan(s: &str) -> Result<i64, String> {
    duijie_domain::money::yuan_to_fen(s)
        .ok_or_else(|| format!("{s:?} is not an amount in yuan (e.g. \"3000.00\"; at most two decimals, not negative)"))
}

fn amount(a: &Amount) -> CliResult<i64> {
    let text = match a {
        Amount::Int(i) if *i < 0 => return Err(CliError::Usage(format!("amount_yuan: {i} is negative"))),
        Amount::Int(i) => i.to_string(),
        Amount::Float(f) if !f.is_finite() => return Err(CliError::Usage("amount_yuan: not a number".into())),
        // The shortest representation that reads back as the same float: 12.34 stays "12.34".
        Amount::Float(f) => format!("{f}"),
        Amount::Text(s) => s.clone(),
    };
    parse_yuan(&text).map_err(|e| CliError::Usage(format!("amount_yuan: {e}")))
}

/// RFC 3339, or a date (midnight China time).
pub fn parse_time(field: &str, s: &str) -> CliResult<prost_types::Timestamp> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        let t = t.with_timezone(&Utc);
        return Ok(duijie_common::envelope::timestamp(t));
    }
    let d = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| CliError::Usage(format!("{field}: {s:?} is neither an RFC 3339 time nor a date (YYYY-MM-DD)")))?;
    output::china_midnight(d).map_err(CliError::Failure)
}

fn agency(field: &str, s: &str) -> CliResult<AgencyNode> {
    s.parse().map_err(|e| CliError::Usage(format!("{field}: {e}")))
}

impl ReferralFile {
    /// The request this file describes. Checks what the file's own format requires (agencies,
    /// enum names, amounts, times); the service checks the rest (identity numbers, the clock
    /// policy for the agency, required fields) and names the field it refuses.
    pub fn to_submission(&self) -> CliResult<Submission> {
        let from = agency("from", &self.from)?;
        if !matches!(from.kind(), AgencyKind::Court | AgencyKind::Police | AgencyKind::Petition | AgencyKind::Procuratorate) {
            return Err(CliError::Usage(format!("from: {from} does not send referrals (a court, police, petition office or procuratorate does)")));
        }
        let to = agency("to", self.to.as_deref().ok_or_else(|| CliError::Usage("to: the mediation body that receives the case is required".into()))?)?;
        if self.intake.is_some() {
            return Err(CliError::Usage("intake: only a case a mediation body registers itself has one (duijie intake)".into()));
        }
        let clock = self.clock_policy.as_deref().ok_or_else(|| CliError::Usage("clock_policy: is required".into()))?;
        let referral = self.referral(clock, None)?;
        Ok(Submission {
            from,
            request: SubmitReferralRequest { to: Some(AgencyRef::from(&to)), case_code: self.case_code.trim().to_owned(), referral: Some(referral) },
        })
    }

    /// The registration this file describes (`duijie intake`): the body that took the dispute
    /// in, and the request.
    pub fn to_intake(&self) -> CliResult<(AgencyNode, RegisterCaseRequest)> {
        let from = agency("from", &self.from)?;
        if from.kind() != AgencyKind::Mediation {
            return Err(CliError::Usage(format!("from: {from} is not a mediation body (only one registers a case it took in itself)")));
        }
        if self.to.is_some() {
            return Err(CliError::Usage("to: a case the body took in itself goes to no one (leave `to` out)".into()));
        }
        let entry = self.intake.as_ref().ok_or_else(|| CliError::Usage("intake: source, risk_level and received_by are required".into()))?;
        let intake = Intake {
            source: enum_value("intake.source", &entry.source, "INTAKE_SOURCE_", |i| IntakeSource::try_from(i).ok().map(|e| e.as_str_name()))?,
            risk_level: enum_value("intake.risk_level", &entry.risk_level, "RISK_LEVEL_", |i| RiskLevel::try_from(i).ok().map(|e| e.as_str_name()))?,
            received_by: entry.received_by.trim().to_owned(),
        };
        let referral = self.referral(self.clock_policy.as_deref().unwrap_or("peoples_mediation"), Some(intake))?;
        Ok((from, RegisterCaseRequest { case_code: self.case_code.trim().to_owned(), referral: Some(referral) }))
    }

    /// The referral content of the file, timed by `clock`.
    fn referral(&self, clock: &str, intake: Option<Intake>) -> CliResult<Referral> {
        let mode = match &self.mode {
            Some(m) => enum_value("mode", m, "REFERRAL_MODE_", |i| ReferralMode::try_from(i).ok().map(|e| e.as_str_name()))?,
            None => 0,
        };
        let category = match &self.category {
            Some(c) => enum_value("category", c, "DISPUTE_CATEGORY_", |i| DisputeCategory::try_from(i).ok().map(|e| e.as_str_name()))?,
            None => 0,
        };
        let clock = enum_value("clock_policy", clock, "CLOCK_POLICY_KIND_", |i| {
            ClockPolicyKind::try_from(i).ok().map(|e| e.as_str_name())
        })?;
        let mut parties = Vec::new();
        for (i, p) in self.parties.iter().enumerate() {
            let field = |f: &str| format!("parties[{i}].{f}");
            let role = enum_value(&field("role"), &p.role, "PARTY_ROLE_", |i| PartyRole::try_from(i).ok().map(|e| e.as_str_name()))?;
            let party_type = enum_value(&field("type"), p.party_type.as_deref().unwrap_or("natural_person"), "PARTY_TYPE_", |i| {
                PartyType::try_from(i).ok().map(|e| e.as_str_name())
            })?;
            let identity = match &p.id_number {
                Some(number) => {
                    let doc = enum_value(&field("id_type"), p.id_type.as_deref().unwrap_or("resident_id_card"), "ID_DOCUMENT_TYPE_", |i| {
                        IdDocumentType::try_from(i).ok().map(|e| e.as_str_name())
                    })?;
                    Some(IdentityDocument { document_type: doc, number: number.trim().to_owned() })
                }
                None if p.id_type.is_some() => return Err(CliError::Usage(format!("{}: id_type without id_number", field("id_number")))),
                None => None,
            };
            parties.push(Party {
                party_id: p.id.clone(),
                role,
                party_type,
                name: p.name.clone(),
                identity,
                contact: p.contact.clone(),
                address: p.address.clone(),
                representative: p.representative.clone(),
                sealed: Vec::new(),
            });
        }
        for c in &self.consents {
            if !self.parties.iter().any(|p| &p.id == c) {
                return Err(CliError::Usage(format!("consents: {c:?} is not the id of a party")));
            }
        }
        let registered_at = self.registered_at.as_deref().map(|t| parse_time("registered_at", t)).transpose()?;
        let amount = self.amount_yuan.as_ref().map(amount).transpose()?.map(Money::cny);
        let client_request_id = match &self.client_request_id {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            // Derived from the case code: sending the same file again returns the same case.
            _ => format!("file:{}", self.case_code.trim()),
        };
        Ok(Referral {
            legal_basis: self.legal_basis.clone(),
            mode,
            source_reference: self.source_reference.clone(),
            registered_at,
            parties,
            category,
            cause_of_action: self.cause_of_action.clone(),
            facts: self.facts.clone(),
            claims: self.claims.clone(),
            amount,
            consents: self.consents.iter().map(|p| PartyConsent { party_id: p.clone(), consented: true, ..Default::default() }).collect(),
            clock_policy: Some(ClockPolicy { kind: clock, ..Default::default() }),
            client_request_id,
            note: self.note.clone(),
            intake,
            ..Default::default()
        })
    }
}

/// Prints a case the way `send` answers.
fn print_case(ctx: &Ctx, v: &CaseView) {
    if ctx.json {
        output::print_json(&serde_json::json!({
            "case_id": v.case_id,
            "case_code": v.case_code,
            "channel": output::channel(v.channel),
            "referrer": output::agency(v.referrer.as_ref()),
            "holder": output::agency(v.holder.as_ref()),
            "state": v.state,
        }));
    } else {
        println!("case      {}", v.case_id);
        println!("code      {}", v.case_code);
        println!("channel   {} {}", output::channel_zh(v.channel), output::channel(v.channel));
        println!("holder    {}", output::agency(v.holder.as_ref()));
        println!("state     {}", v.state);
    }
}

/// Runs `duijie send`.
pub async fn run(ctx: &Ctx, args: SendArgs) -> CliResult<()> {
    let file = read_file(&args.file)?;
    let sub = file.to_submission()?;
    // The certificate must name the sender: the service acts for the calling agency only.
    if let Some(who) = &ctx.as_agency
        && *who != sub.from
    {
        return Err(CliError::Usage(format!("--as {who} is not the file's sender {}", sub.from)));
    }
    let mut client = ReferralsServiceClient::new(ctx.agency_channel(&sub.from)?);
    let view = client.submit_referral(sub.request).await.and_then(answered_case).or_refused("submitting the referral")?;
    print_case(ctx, &view);
    Ok(())
}

/// Runs `duijie intake`.
pub async fn run_intake(ctx: &Ctx, args: SendArgs) -> CliResult<()> {
    let file = read_file(&args.file)?;
    let (from, request) = file.to_intake()?;
    if let Some(who) = &ctx.as_agency
        && *who != from
    {
        return Err(CliError::Usage(format!("--as {who} is not the file's body {from}")));
    }
    let mut client = MediationServiceClient::new(ctx.agency_channel(&from)?);
    let view = client.register_case(request).await.and_then(answered_case).or_refused("registering the case")?;
    print_case(ctx, &view);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_are_exact() {
        assert_eq!(parse_yuan("3000"), Ok(300_000));
        assert_eq!(parse_yuan("3000.5"), Ok(300_050));
        assert_eq!(parse_yuan(" 0.07 "), Ok(7));
        for bad in ["", "-1", "1.234", "1,000", "1e3", "abc", "1.", ".5", "99999999999999999999"] {
            assert!(parse_yuan(bad).is_err(), "{bad}");
        }
        assert_eq!(amount(&Amount::Float(12.34)).ok(), Some(1234));
        assert!(amount(&Amount::Int(-5)).is_err());
    }

    #[test]
    fn unknown_enum_names_list_the_allowed_ones() {
        let e = enum_value("clock_policy", "court_fast", "CLOCK_POLICY_KIND_", |i| ClockPolicyKind::try_from(i).ok().map(|e| e.as_str_name()));
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("clock_policy: unknown value \"court_fast\""), "{msg}");
        assert!(msg.contains("court_ordinary, court_simplified, court_pre_filing, peoples_mediation, petition, police"), "{msg}");
        let ok = enum_value("x", "Court-Ordinary", "CLOCK_POLICY_KIND_", |i| ClockPolicyKind::try_from(i).ok().map(|e| e.as_str_name()));
        assert_eq!(ok.ok(), Some(ClockPolicyKind::CourtOrdinary as i32));
    }

    #[test]
    fn the_example_file_is_a_valid_referral() -> anyhow::Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/referral.yaml");
        let file = read_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let sub = file.to_submission().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(sub.from.to_string(), "court:431003");
        let r = sub.request.referral.unwrap_or_default();
        assert_eq!(r.parties.len(), 2);
        assert_eq!(r.clock_policy.map(|c| c.kind()), Some(ClockPolicyKind::CourtOrdinary));
        assert_eq!(r.amount.map(|m| m.minor_units), Some(1_280_050));
        assert_eq!(r.client_request_id, "file:JF-431003-2026-000123");
        assert!(r.registered_at.is_some());
        Ok(())
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = "from: court:431003\nto: mediation:431003\ncase_code: X\nparties: []\nfacts: x\nclock_policy: court_pre_filing\ncolour: red\n";
        let e = serde_yaml::from_str::<ReferralFile>(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("colour"), "{e}");
    }
}
