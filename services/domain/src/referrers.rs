//! What differs between the four referring agencies: the clock policies their referrals may
//! carry, how they refer, and the dispositions they announce. The services refuse anything
//! else; the console offers exactly these (the first is the form's default).

use duijie_proto::v1::{AgencyKind, ClockPolicyKind, DispositionKind, ReferralMode};

/// One referring agency kind's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferrerRules {
    pub kind: AgencyKind,
    pub clock_policies: &'static [ClockPolicyKind],
    pub referral_modes: &'static [ReferralMode],
    pub dispositions: &'static [DispositionKind],
}

use ClockPolicyKind as C;
use DispositionKind as D;
use ReferralMode as M;

const RULES: [ReferrerRules; 4] = [
    ReferrerRules {
        kind: AgencyKind::Court,
        clock_policies: &[C::CourtPreFiling, C::CourtOrdinary, C::CourtSimplified],
        referral_modes: &[M::PreLitigation, M::Delegated, M::Entrusted],
        dispositions: &[D::FiledForTrial, D::SuitWithdrawn, D::Adjudicated, D::Other],
    },
    ReferrerRules {
        kind: AgencyKind::Police,
        clock_policies: &[C::Police, C::PeoplesMediation],
        referral_modes: &[M::PoliceTransfer],
        dispositions: &[D::Penalty, D::NoPenalty, D::Other],
    },
    ReferrerRules {
        kind: AgencyKind::Petition,
        clock_policies: &[C::Petition],
        referral_modes: &[M::PetitionTransfer],
        dispositions: &[D::PetitionClosed, D::Other],
    },
    ReferrerRules {
        kind: AgencyKind::Procuratorate,
        clock_policies: &[C::PeoplesMediation],
        referral_modes: &[M::CriminalReconciliation],
        dispositions: &[D::NonProsecution, D::Prosecuted, D::Other],
    },
];

/// The rules of a referring agency kind; `None` for agencies that do not refer.
pub fn of(kind: AgencyKind) -> Option<&'static ReferrerRules> {
    RULES.iter().find(|r| r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_referring_kind_has_rules_and_only_they() {
        for kind in AgencyKind::ALL {
            assert_eq!(of(kind).is_some(), crate::case::channel_of(kind).is_some(), "{kind}");
        }
        for r in &RULES {
            assert!(!r.clock_policies.is_empty() && !r.referral_modes.is_empty(), "{}", r.kind);
            assert!(r.dispositions.contains(&D::Other), "{} may always report another disposition", r.kind);
        }
    }
}
