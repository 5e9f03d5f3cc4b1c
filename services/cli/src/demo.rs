//! The demo load: N generated referrals, round-robin over the four channels, each driven
//! through the mediation lifecycle by calling the services as the right agencies, with random
//! (seeded) outcomes, to closure — or, with `mixed`, each stopped at a random stage so that a
//! console shows cases in every state.
//!
//! * 诉调 court → district centre, clocks ordinary / simplified / pre-filing in turn;
//! * 警调 police → district centre;
//! * 访调 petition office → the village or the town committee; some village cases are escalated
//!   to the town committee (上报), which continues the mediation;
//! * 检调 procuratorate → district centre;
//! * some 诉调 cases are redirected (转办) from the centre to the town committee, which signs
//!   for them afresh.
//!
//! Each step is an action of the domain's table (`duijie_domain::actions`): the table says which
//! side takes it, and its key names the step.
//!
//! Everything is deterministic from the seed: case codes, client request ids (SubmitReferral is
//! idempotent by them) and an `idempotency-key` per step, so running the same seed again
//! re-answers every step without acting twice and ends in the same states. The plans are part
//! of what a seed means: a change to them must also change the case codes (the `D<seed>` tag),
//! or a rerun against cases made by the old plans would try other steps on them. After each step the
//! driver waits (polling `CasesService.GetCase`, with a deadline) until the other side of the handoff
//! received every message the acting side has sent — never a fixed sleep. It looks again after
//! 5 ms, then twice as long each time up to `poll`, so a quick handoff is seen quickly without
//! flooding the services with reads while a slow one is awaited.
//!
//! The system benchmark (`duijie-system-bench`) drives its load through [`run`] and hears of every
//! call through a [`CallObserver`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Datelike as _;
use clap::Args;
use duijie_domain::AgencyNode;
use duijie_domain::actions::{self, Action, Side};
use duijie_proto::answered_case;
use duijie_proto::v1::cases_service_client::CasesServiceClient;
use duijie_proto::v1::court_service_client::CourtServiceClient;
use duijie_proto::v1::mediation_service_client::MediationServiceClient;
use duijie_proto::v1::petition_service_client::PetitionServiceClient;
use duijie_proto::v1::police_service_client::PoliceServiceClient;
use duijie_proto::v1::procuratorate_service_client::ProcuratorateServiceClient;
use duijie_proto::v1::referrals_service_client::ReferralsServiceClient;
use duijie_proto::v1::*;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tonic::transport::Channel as GrpcChannel;

use crate::error::{CliError, CliResult};
use crate::{Ctx, output};

/// The longest the driver waits between two looks at the other side (and between retries of a
/// call the service could not take yet).
pub const POLL: Duration = Duration::from_millis(100);

/// The first wait before looking at the other side again; doubled each time up to the poll cap.
const FIRST_POLL: Duration = Duration::from_millis(5);

/// `duijie demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many referrals.
    #[arg(long)]
    pub cases: u32,
    /// Seed of every random choice; the same seed gives the same cases (and re-running it does
    /// not duplicate them). Random if absent (printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop each case at a random stage (delivered, signed for, accepted, in mediation,
    /// settled, closed, …) instead of driving all of them to closure.
    #[arg(long)]
    pub mixed: bool,
    /// Cases driven at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How long one step may wait for the other side (seconds).
    #[arg(long, default_value_t = 60)]
    pub step_timeout_secs: u64,
    /// Learn that a handoff arrived from the agencies' live feeds (`CasesService.Watch`) instead
    /// of looking at the case until it did.
    #[arg(long)]
    pub watch: bool,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub cases: u32,
    pub seed: u64,
    pub mixed: bool,
    pub concurrency: usize,
    pub step_timeout: Duration,
    /// The longest wait between two looks at the other side ([`POLL`] for the command).
    pub poll: Duration,
    /// Hears of every gRPC call the run makes (none for the command).
    pub observer: Option<Arc<dyn CallObserver>>,
    /// The agencies' live feeds: when set, the driver waits for what the feed says arrived and
    /// then reads the case once, instead of looking at it until it arrived.
    pub arrivals: Option<Arc<crate::feed::Arrivals>>,
}

/// Told of every gRPC call a demo run makes, answered or refused: what the system benchmark
/// measures per method.
pub trait CallObserver: Send + Sync + std::fmt::Debug {
    /// `method` (the gRPC method name, e.g. `SignFor`, `GetCase`) answered with `code`
    /// (`Ok` for an answer) after `took`.
    fn answered(&self, method: &'static str, took: Duration, code: tonic::Code);
}

impl DemoConfig {
    /// Runs `call` as `method`, telling the observer how it went.
    async fn observed<T>(&self, method: &'static str, call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
        let started = Instant::now();
        let answer = call.await;
        if let Some(o) = &self.observer {
            o.answered(method, started.elapsed(), answer.as_ref().map_or_else(tonic::Status::code, |_| tonic::Code::Ok));
        }
        answer
    }
}

/// Waits between looks: [`FIRST_POLL`], then twice as long each time, up to a cap.
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Self {
        Self { next: FIRST_POLL.min(cap), cap }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.cap);
    }
}

/// One agency with its own certificate's channel.
#[derive(Clone, Debug)]
pub struct Agent {
    pub who: AgencyNode,
    pub ch: GrpcChannel,
}

impl Agent {
    fn cases(&self) -> CasesServiceClient<GrpcChannel> {
        CasesServiceClient::new(self.ch.clone())
    }
    fn referrals(&self) -> ReferralsServiceClient<GrpcChannel> {
        ReferralsServiceClient::new(self.ch.clone())
    }
    fn mediation(&self) -> MediationServiceClient<GrpcChannel> {
        MediationServiceClient::new(self.ch.clone())
    }
}

/// The demo agencies of the local stack, each calling its own service.
#[derive(Clone, Debug)]
pub struct Agencies {
    pub court: Agent,
    pub police: Agent,
    pub petition: Agent,
    pub procuratorate: Agent,
    pub centre: Agent,
    pub town: Agent,
    pub village: Agent,
}

/// One of the demo agencies, as the plans name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desk {
    Court,
    Police,
    Petition,
    Procuratorate,
    /// The district mediation centre.
    Centre,
    /// The town committee cases are handed on to.
    Town,
    /// A village committee under the town.
    Village,
}

impl Desk {
    /// Its kind and code.
    fn parts(self) -> (AgencyKind, &'static str) {
        match self {
            Desk::Court => (AgencyKind::Court, "431003"),
            Desk::Police => (AgencyKind::Police, "431003-01"),
            Desk::Petition => (AgencyKind::Petition, "431003"),
            Desk::Procuratorate => (AgencyKind::Procuratorate, "431003"),
            Desk::Centre => (AgencyKind::Mediation, "431003"),
            Desk::Town => (AgencyKind::Mediation, "431003-102"),
            Desk::Village => (AgencyKind::Mediation, "431003-102-05"),
        }
    }

    fn code(self) -> &'static str {
        self.parts().1
    }
}

impl Agencies {
    /// Every agency with the channel to its service.
    pub fn all(&self) -> Vec<(AgencyNode, GrpcChannel)> {
        [&self.court, &self.police, &self.petition, &self.procuratorate, &self.centre, &self.town, &self.village]
            .into_iter()
            .map(|a| (a.who.clone(), a.ch.clone()))
            .collect()
    }

    /// Channels for the demo agencies, with their certificates from the context's PKI.
    pub fn from_ctx(ctx: &Ctx) -> CliResult<Self> {
        let agent = |desk: Desk| -> CliResult<Agent> {
            let (kind, code) = desk.parts();
            let who = AgencyNode::new(kind, code).map_err(|e| CliError::Usage(format!("demo agency {desk:?}: {e}")))?;
            Ok(Agent { ch: ctx.agency_channel(&who)?, who })
        };
        Ok(Self {
            court: agent(Desk::Court)?,
            police: agent(Desk::Police)?,
            petition: agent(Desk::Petition)?,
            procuratorate: agent(Desk::Procuratorate)?,
            centre: agent(Desk::Centre)?,
            town: agent(Desk::Town)?,
            village: agent(Desk::Village)?,
        })
    }

    fn agent(&self, desk: Desk) -> &Agent {
        match desk {
            Desk::Court => &self.court,
            Desk::Police => &self.police,
            Desk::Petition => &self.petition,
            Desk::Procuratorate => &self.procuratorate,
            Desk::Centre => &self.centre,
            Desk::Town => &self.town,
            Desk::Village => &self.village,
        }
    }
}

/// One step of a case's handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    SignFor,
    Accept,
    Reject,
    Assign,
    Progress,
    Supervise,
    Settle { confirmation: bool },
    Fail,
    Withdraw,
    RequestConfirmation,
    Decide(ConfirmationDecisionKind),
    Perform,
    FollowUp,
    Close(ClosureBasis),
    Recognize,
    Review,
    Dispose(DispositionKind),
    ClosePetition,
    /// The holder hands the case to the town committee: escalation (上报, the town continues
    /// the mediation) or redirect (转办, the town signs for it afresh).
    HandOn { escalate: bool },
}

impl Step {
    /// The table's action this step takes (`duijie_domain::actions`).
    fn action(self) -> CliResult<&'static Action> {
        let key = match self {
            Step::SignFor => "sign_for",
            Step::Accept => "accept",
            Step::Reject => "reject",
            Step::Assign => "assign",
            Step::Progress => "progress",
            Step::Supervise => "supervise",
            Step::Settle { .. } | Step::Fail | Step::Withdraw => "outcome",
            Step::RequestConfirmation => "request_confirmation",
            Step::Decide(_) => "decide_confirmation",
            Step::Perform => "performance",
            Step::FollowUp => "follow_up",
            Step::Close(_) => "close",
            Step::Recognize => "recognize",
            Step::Review => "review",
            Step::Dispose(_) => "dispose",
            Step::ClosePetition => "close_petition",
            Step::HandOn { escalate: true } => "escalate",
            Step::HandOn { escalate: false } => "redirect",
        };
        actions::by_key(key).ok_or_else(|| CliError::Failure(anyhow::anyhow!("the demo step {self:?} names no action of the table ({key})")))
    }

    /// The step's name in its idempotency key and messages: the action's key, or for an action
    /// taken in several forms (an outcome, a judicial confirmation decision, a performance) the
    /// form, as earlier runs of a seed wrote them.
    fn label(self) -> CliResult<&'static str> {
        Ok(match self {
            Step::Settle { .. } => "settled",
            Step::Fail => "failed",
            Step::Withdraw => "withdrawn",
            Step::Decide(ConfirmationDecisionKind::Accepted) => "confirmation_accepted",
            Step::Decide(ConfirmationDecisionKind::Granted) => "confirmation_granted",
            Step::Decide(ConfirmationDecisionKind::Denied) => "confirmation_denied",
            Step::Decide(_) => "confirmation_decision",
            Step::Perform => "performed",
            // The names earlier runs wrote into these steps' idempotency keys, so that a rerun of
            // a seed against an existing stack still finds them done.
            Step::Recognize => "recognize_agreement",
            Step::Review => "review_reconciliation",
            _ => self.action()?.key,
        })
    }
}

/// A dispute to generate: what the referral says.
struct Scenario {
    cause: &'static str,
    category: DisputeCategory,
    facts: &'static str,
    claims: &'static [&'static str],
    amount_fen: i64,
}

const COURT_SCENARIOS: &[Scenario] = &[
    Scenario { cause: "相邻关系纠纷", category: DisputeCategory::Neighbour, facts: "双方系前后院邻居，因院墙加高改变排水方向致原告院内积水，多次协商未果。", claims: &["排除妨碍，恢复原排水方向", "赔偿损失"], amount_fen: 560_000 },
    Scenario { cause: "民间借贷纠纷", category: DisputeCategory::PrivateLending, facts: "被告于2024年向原告借款，约定一年内归还，到期后经多次催讨未还。", claims: &["归还借款本金", "支付逾期利息"], amount_fen: 5_000_000 },
    Scenario { cause: "物业服务合同纠纷", category: DisputeCategory::PropertyManagement, facts: "业主以电梯长期故障、服务不到位为由拒交物业费两年。", claims: &["支付拖欠物业费"], amount_fen: 864_000 },
    Scenario { cause: "买卖合同纠纷", category: DisputeCategory::Contract, facts: "原告向被告供应建材，被告收货后尚欠货款未付。", claims: &["支付货款", "支付违约金"], amount_fen: 12_800_050 },
];
const POLICE_SCENARIOS: &[Scenario] = &[
    Scenario { cause: "邻里纠纷引发的殴打他人", category: DisputeCategory::PublicSecurity, facts: "双方因停车位发生口角，继而互相推搡，一方面部轻微伤。", claims: &["赔偿医疗费、误工费"], amount_fen: 320_000 },
    Scenario { cause: "道路交通事故损害赔偿", category: DisputeCategory::TrafficAccident, facts: "电动自行车与小型轿车在路口剐蹭，电动车驾驶人轻微受伤，车辆受损。", claims: &["赔偿车辆维修费", "赔偿医疗费"], amount_fen: 450_000 },
];
const PETITION_SCENARIOS: &[Scenario] = &[
    Scenario { cause: "拖欠农民工工资", category: DisputeCategory::Labour, facts: "十余名务工人员反映某工地包工头拖欠2025年下半年工资，多次到镇政府上访。", claims: &["支付拖欠工资"], amount_fen: 38_600_000 },
    Scenario { cause: "征地补偿款分配", category: DisputeCategory::RequisitionDemolition, facts: "村民小组内部对征地补偿款分配方案有异议，外嫁女要求同等分配。", claims: &["按人口平均分配补偿款"], amount_fen: 2_400_000 },
    Scenario { cause: "土地承包经营权纠纷", category: DisputeCategory::Land, facts: "两户村民因承包地边界不清发生争执，一方毁坏另一方青苗。", claims: &["确认地界", "赔偿青苗损失"], amount_fen: 180_000 },
];
const PROCURATORATE_SCENARIOS: &[Scenario] = &[
    Scenario { cause: "轻伤害案件刑事和解", category: DisputeCategory::MinorCriminal, facts: "犯罪嫌疑人酒后与被害人发生争执致其轻伤二级，案发后认罪悔罪，有和解意愿。", claims: &["赔偿医疗费、误工费、营养费", "书面赔礼道歉"], amount_fen: 3_600_000 },
    Scenario { cause: "盗窃案件刑事和解", category: DisputeCategory::MinorCriminal, facts: "犯罪嫌疑人初犯，盗窃邻居电动车一辆，已归还，愿意赔偿损失取得谅解。", claims: &["赔偿损失并赔礼道歉"], amount_fen: 260_000 },
];

const SURNAMES: &[&str] = &["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "周", "吴", "徐", "孙", "胡", "朱", "高", "林", "何", "郭", "马", "罗"];
const GIVEN: &[&str] = &["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "建国", "桂兰"];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn person_name(rng: &mut StdRng) -> String {
    format!("{}{}", pick(rng, SURNAMES), pick(rng, GIVEN))
}

/// A resident identity number of 郴州市北湖区 (431003) with a valid GB 11643 check character.
pub fn identity_number(rng: &mut StdRng) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: [u8; 11] = *b"10X98765432";
    let body = format!(
        "431003{:04}{:02}{:02}{:03}",
        rng.random_range(1950..=2000),
        rng.random_range(1..=12),
        rng.random_range(1..=28),
        rng.random_range(1..=999)
    );
    let sum: u32 = body.bytes().zip(WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    format!("{body}{}", char::from(CHECK[(sum % 11) as usize]))
}

fn phone(rng: &mut StdRng) -> String {
    format!("1{}{:08}", pick(rng, &["38", "39", "50", "86", "77"]), rng.random_range(0..100_000_000))
}

fn hex(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// One case to drive: generated in full before the first call, so that a retry or a re-run
/// sends exactly the same content.
#[derive(Debug, Clone)]
struct CasePlan {
    n: u32,
    tag: String,
    case_code: String,
    channel: Channel,
    referrer: Desk,
    holder: Desk,
    name: &'static str,
    steps: Vec<Step>,
    /// How many steps to take (all of them unless `mixed`).
    stop: usize,
    referral: Referral,
    agreement_sha: String,
    settled_fen: i64,
    mediator: Mediator,
    clerk: String,
    doc_no: u32,
    year: i32,
}

/// Chooses by weight.
fn weighted<T: Clone>(rng: &mut StdRng, options: &[(u32, T)]) -> T {
    let total: u32 = options.iter().map(|(w, _)| w).sum();
    let mut x = rng.random_range(0..total.max(1));
    for (w, v) in options {
        if x < *w {
            return v.clone();
        }
        x -= w;
    }
    options[0].1.clone()
}

fn plan_case(cfg: &DemoConfig, n: u32, year: i32) -> CasePlan {
    use ClosureBasis as B;
    use ConfirmationDecisionKind as D;
    use DispositionKind as P;
    use Step as S;
    // One generator per case: case n is the same whatever --cases says.
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mediation_start = [S::SignFor, S::Accept, S::Assign];
    let with = |prefix: &[Step], rest: &[Step]| -> Vec<Step> { prefix.iter().chain(rest).copied().collect() };
    let (channel, referrer, holder, clock, scenarios, mode, legal_basis, roles) = match (n - 1) % 4 {
        0 => {
            let clock = [ClockPolicyKind::CourtOrdinary, ClockPolicyKind::CourtSimplified, ClockPolicyKind::CourtPreFiling][((n - 1) / 4 % 3) as usize];
            let (mode, basis) = if clock == ClockPolicyKind::CourtPreFiling {
                (ReferralMode::PreLitigation, "《最高人民法院关于人民法院特邀调解的规定》")
            } else {
                (ReferralMode::Delegated, "最高人民法院《关于严格依法规范民事案件立案与调解工作的意见》")
            };
            (Channel::Court, Desk::Court, Desk::Centre, clock, COURT_SCENARIOS, mode, basis, (PartyRole::Plaintiff, PartyRole::Defendant))
        }
        1 => (Channel::Police, Desk::Police, Desk::Centre, ClockPolicyKind::Police, POLICE_SCENARIOS, ReferralMode::PoliceTransfer, "《治安管理处罚法》第九条；公通字〔2007〕81号", (PartyRole::Victim, PartyRole::Offender)),
        2 => {
            let holder = if rng.random_bool(0.5) { Desk::Village } else { Desk::Town };
            (Channel::Petition, Desk::Petition, holder, ClockPolicyKind::Petition, PETITION_SCENARIOS, ReferralMode::PetitionTransfer, "《信访工作条例》第三十一条", (PartyRole::Petitioner, PartyRole::Respondent))
        }
        _ => (Channel::Procuratorate, Desk::Procuratorate, Desk::Centre, ClockPolicyKind::PeoplesMediation, PROCURATORATE_SCENARIOS, ReferralMode::CriminalReconciliation, "《刑事诉讼法》第二百八十八条", (PartyRole::Victim, PartyRole::Offender)),
    };
    let (name, steps): (&'static str, Vec<Step>) = match channel {
        Channel::Court => weighted(&mut rng, &[
            (30, ("settled, judicial confirmation granted", with(&mediation_start, &[S::Settle { confirmation: true }, S::RequestConfirmation, S::Decide(D::Accepted), S::Decide(D::Granted), S::Perform, S::FollowUp, S::Close(B::Performed)]))),
            (20, ("settled, performed", with(&mediation_start, &[S::Progress, S::Settle { confirmation: false }, S::Perform, S::Close(B::Performed)]))),
            (20, ("failed, filed for trial", with(&mediation_start, &[S::Progress, S::Fail, S::Dispose(P::FiledForTrial)]))),
            (10, ("rejected, filed for trial", vec![S::SignFor, S::Reject, S::Dispose(P::FiledForTrial)])),
            (10, ("withdrawn, suit withdrawn", with(&mediation_start, &[S::Withdraw, S::Dispose(P::SuitWithdrawn)]))),
            (10, ("confirmation denied, adjudicated", with(&mediation_start, &[S::Settle { confirmation: true }, S::RequestConfirmation, S::Decide(D::Accepted), S::Decide(D::Denied), S::Dispose(P::Adjudicated)]))),
            (10, ("redirected to the town committee, settled, performed", vec![S::SignFor, S::HandOn { escalate: false }, S::SignFor, S::Accept, S::Assign, S::Settle { confirmation: false }, S::Perform, S::Close(B::Performed)])),
        ]),
        Channel::Police => weighted(&mut rng, &[
            (60, ("settled, performed, agreement recognised", with(&mediation_start, &[S::Settle { confirmation: false }, S::Perform, S::Recognize, S::Close(B::Performed)]))),
            (25, ("failed, penalty", with(&mediation_start, &[S::Fail, S::Dispose(P::Penalty)]))),
            (15, ("rejected, handled by the police", vec![S::SignFor, S::Reject, S::Dispose(P::Other)])),
        ]),
        Channel::Petition if holder == Desk::Village => weighted(&mut rng, &[
            (40, ("supervised, settled, petition closed", with(&mediation_start, &[S::Supervise, S::Progress, S::Settle { confirmation: false }, S::Perform, S::FollowUp, S::Close(B::Performed), S::ClosePetition]))),
            (35, ("escalated village → town, settled, petition closed", with(&mediation_start, &[S::Supervise, S::HandOn { escalate: true }, S::Progress, S::Settle { confirmation: false }, S::Perform, S::FollowUp, S::Close(B::Performed), S::ClosePetition]))),
            (25, ("failed, handled by the petition office", with(&mediation_start, &[S::Supervise, S::Fail, S::Dispose(P::Other)]))),
        ]),
        Channel::Petition => weighted(&mut rng, &[
            (65, ("supervised, settled, petition closed", with(&mediation_start, &[S::Supervise, S::Progress, S::Settle { confirmation: false }, S::Perform, S::FollowUp, S::Close(B::Performed), S::ClosePetition]))),
            (35, ("failed, handled by the petition office", with(&mediation_start, &[S::Supervise, S::Fail, S::Dispose(P::Other)]))),
        ]),
        _ => weighted(&mut rng, &[
            (65, ("reconciled, non-prosecution", with(&mediation_start, &[S::Settle { confirmation: false }, S::Review, S::Dispose(P::NonProsecution), S::Close(B::Disposed)]))),
            (35, ("failed, prosecuted", with(&mediation_start, &[S::Fail, S::Dispose(P::Prosecuted)]))),
        ]),
    };
    let stop = if cfg.mixed { rng.random_range(0..=steps.len()) } else { steps.len() };
    let scenario = pick(&mut rng, scenarios);
    let party = |rng: &mut StdRng, id: &str, role: PartyRole| Party {
        party_id: id.into(),
        role: role as i32,
        party_type: PartyType::NaturalPerson as i32,
        name: person_name(rng),
        identity: Some(IdentityDocument { document_type: IdDocumentType::ResidentIdCard as i32, number: identity_number(rng) }),
        contact: phone(rng),
        address: format!("湖南省郴州市北湖区{}路{}号", pick(rng, &["人民西", "燕泉", "苏仙北", "五岭大道", "国庆南"]), rng.random_range(1..300)),
        ..Default::default()
    };
    let parties = vec![party(&mut rng, "p1", roles.0), party(&mut rng, "p2", roles.1)];
    let tag = format!("{}{}", cfg.seed, if cfg.mixed { "M" } else { "" });
    let case_code = format!("JF-{}-{year}-D{tag}-{n:04}", referrer.code());
    let today = chrono::Utc::now().with_timezone(&output::china()).date_naive();
    let today_midnight = output::china_midnight(today).unwrap_or_default();
    let registered = matches!(clock, ClockPolicyKind::CourtOrdinary | ClockPolicyKind::CourtSimplified);
    let referral = Referral {
        legal_basis: legal_basis.into(),
        mode: mode as i32,
        source_reference: if channel == Channel::Court { format!("({year})湘1003民初{}号", 100 + n) } else { String::new() },
        // Midnight today (China time): in the past, and the same for a re-run the same day.
        registered_at: if registered { Some(today_midnight) } else { None },
        parties,
        category: scenario.category as i32,
        cause_of_action: scenario.cause.into(),
        facts: scenario.facts.into(),
        claims: scenario.claims.iter().map(|c| (*c).to_owned()).collect(),
        amount: Some(Money::cny(scenario.amount_fen)),
        consents: ["p1", "p2"].iter().map(|p| PartyConsent { party_id: (*p).into(), consented: true, method: ConsentMethod::Written as i32, ..Default::default() }).collect(),
        clock_policy: Some(ClockPolicy { kind: clock as i32, ..Default::default() }),
        client_request_id: format!("demo-{tag}-{n}"),
        note: "演示数据 (duijie demo)".into(),
        ..Default::default()
    };
    let settled_fen = scenario.amount_fen / 100 * rng.random_range(60..=100);
    CasePlan {
        n,
        case_code,
        channel,
        referrer,
        holder,
        name,
        steps,
        stop,
        referral,
        agreement_sha: hex(&mut rng, 32),
        settled_fen,
        mediator: Mediator { mediator_id: format!("M-{:02}", rng.random_range(1..30)), name: person_name(&mut rng), contact: phone(&mut rng) },
        clerk: person_name(&mut rng),
        doc_no: 10 + n,
        year,
        tag,
    }
}

/// What happened to one case.
#[derive(Debug)]
pub struct CaseReport {
    pub n: u32,
    pub case_code: String,
    pub case_id: Option<String>,
    pub channel: Channel,
    /// The path chosen for the case, e.g. "settled, performed".
    pub plan: &'static str,
    /// Steps the run was to take (fewer than the plan's with `mixed`), of the plan's total.
    pub steps_planned: usize,
    pub steps_total: usize,
    pub steps_done: usize,
    /// The state the other side of the last step saw at the end.
    pub state: Option<String>,
    pub error: Option<CliError>,
}

/// What a demo run did.
#[derive(Debug)]
pub struct DemoReport {
    pub seed: u64,
    pub mixed: bool,
    pub cases: Vec<CaseReport>,
    pub elapsed: Duration,
}

impl DemoReport {
    /// Cases by final state (`FAILED RUN` for cases the driver could not finish).
    pub fn by_state(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in &self.cases {
            let k = if c.error.is_some() { "(driver failed)".to_owned() } else { c.state.clone().unwrap_or_else(|| "?".into()) };
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }

    /// The cases the driver could not finish.
    pub fn failures(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases.iter().filter(|c| c.error.is_some())
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "seed": self.seed,
            "mixed": self.mixed,
            "cases": self.cases.len(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "by_state": self.by_state(),
            "failed": self.failures().count(),
            "results": self.cases.iter().map(|c| json!({
                "n": c.n, "case_code": c.case_code, "case_id": c.case_id, "channel": c.channel.as_str(), "plan": c.plan,
                "steps_planned": c.steps_planned, "steps_total": c.steps_total, "steps_done": c.steps_done, "state": c.state,
                "error": c.error.as_ref().map(ToString::to_string),
            })).collect::<Vec<_>>(),
        })
    }
}

type CallResult = Result<CaseView, tonic::Status>;
type CallFuture = Pin<Box<dyn Future<Output = CallResult> + Send>>;

fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(key) {
        r.metadata_mut().insert("idempotency-key", v);
    }
    r
}

/// Calls `f` until it answers, retrying while the service is unavailable (restarting, or new
/// referrals paused while the audit store catches up), up to `deadline`.
async fn call(cfg: &DemoConfig, method: &'static str, what: &str, deadline: Instant, mut f: impl FnMut() -> CallFuture) -> CliResult<CaseView> {
    loop {
        match cfg.observed(method, f()).await {
            Ok(v) => return Ok(v),
            Err(s) => {
                let e = CliError::from_status(what, &s);
                if !e.is_transient() || Instant::now() >= deadline {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(cfg.poll).await;
    }
}

/// Waits until `other` has received every message `view`'s agency has sent in the case.
async fn sync(cfg: &DemoConfig, view: &CaseView, other: &Agent, deadline: Instant) -> CliResult<CaseView> {
    // Only what went to `other`: a hand-over also sends the case to the next committee.
    let sent: Vec<&str> =
        view.timeline.iter().filter(|e| e.direction == "out" && other.who.is(e.recipient.as_ref())).map(|e| e.message_id.as_str()).collect();
    let what = || format!("reading case {} as {}", view.case_code, other.who);
    if let Some(a) = &cfg.arrivals {
        a.wait(&other.who.to_string(), &sent, deadline).await;
    }
    let read = || cfg.observed("GetCase", async { other.cases().get_case(GetCaseRequest { case_id: view.case_id.clone() }).await.and_then(answered_case) });
    let mut poll = Backoff::new(cfg.poll);
    loop {
        match read().await {
            // A view is one snapshot: the state shown is the one after those messages.
            Ok(v) if sent.iter().all(|id| v.timeline.iter().any(|e| e.message_id == *id)) => return Ok(v),
            Ok(_) => {}
            // Not arrived yet, or the service restarting.
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unavailable) => {}
            Err(s) => return Err(CliError::from_status(&what(), &s)),
        }
        if Instant::now() >= deadline {
            return Err(CliError::Unavailable(format!("timed out waiting for {} to receive what was sent in case {}", other.who, view.case_code)));
        }
        poll.wait().await;
    }
}

/// Waits until `new_holder` holds the case handed to it.
async fn held_by(cfg: &DemoConfig, view: &CaseView, new_holder: &Agent, deadline: Instant) -> CliResult<CaseView> {
    let what = format!("reading case {} as {}", view.case_code, new_holder.who);
    if let Some(a) = &cfg.arrivals {
        a.wait(&new_holder.who.to_string(), &[view.case_id.as_str()], deadline).await;
    }
    let mut poll = Backoff::new(cfg.poll);
    loop {
        let read = async { new_holder.cases().get_case(GetCaseRequest { case_id: view.case_id.clone() }).await.and_then(answered_case) };
        match cfg.observed("GetCase", read).await {
            Ok(v) if !v.handed_on => return Ok(v),
            Ok(_) => {}
            // Until the hand-over arrives the case is the old holder's, which the same
            // service (one process serves all three committees) answers as PERMISSION_DENIED.
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unavailable | tonic::Code::PermissionDenied) => {}
            Err(s) => return Err(CliError::from_status(&what, &s)),
        }
        if Instant::now() >= deadline {
            return Err(CliError::Unavailable(format!("timed out waiting for {} to take case {}", new_holder.who, view.case_code)));
        }
        poll.wait().await;
    }
}

impl Agencies {
    /// The call that performs `step` on case `id` (built anew for each retry).
    fn request(&self, plan: &CasePlan, holder: Desk, step: Step, id: &str, key: &str) -> impl FnMut() -> CallFuture + use<> {
        let referrer = self.agent(plan.referrer).clone();
        let holder = self.agent(holder).clone();
        let town = AgencyRef::from(&self.town.who);
        let (id, key, plan) = (id.to_owned(), key.to_owned(), plan.clone());
        move || -> CallFuture {
            let (id, key, p) = (id.clone(), key.clone(), &plan);
            let digest = || AttachmentDigest {
                name: "人民调解协议书.pdf".into(),
                media_type: "application/pdf".into(),
                sha256_hex: p.agreement_sha.clone(),
                size_bytes: 48_213,
                ..Default::default()
            };
            let doc = |fmt: &str| format!("({}){fmt}{}号", p.year, p.doc_no);
            let mut m = holder.mediation();
            let mut r = referrer.referrals();
            let ch = referrer.ch.clone();
            match step {
                Step::SignFor => {
                    let receipt = Receipt { signed_by: p.clerk.clone(), signer_position: "收案员".into(), ..Default::default() };
                    Box::pin(async move { m.sign_for(keyed(SignForRequest { case_id: id, receipt: Some(receipt) }, &key)).await.and_then(answered_case) })
                }
                Step::Accept => {
                    let accept = Accept { accepted_by: p.clerk.clone(), local_reference: format!("{}-受", p.case_code), ..Default::default() };
                    Box::pin(async move { m.accept(keyed(AcceptRequest { case_id: id, accept: Some(accept) }, &key)).await.and_then(answered_case) })
                }
                Step::Reject => {
                    let reject = Reject { reason: RejectReason::NotCompetent as i32, explanation: "涉及专业鉴定，本中心不宜调解，建议依法处理".into() };
                    Box::pin(async move { m.reject(keyed(RejectRequest { case_id: id, reject: Some(reject) }, &key)).await.and_then(answered_case) })
                }
                Step::Assign => {
                    let tier = match holder.who.code().matches('-').count() {
                        0 => MediationTier::District,
                        1 => MediationTier::Town,
                        _ => MediationTier::Village,
                    };
                    let a = Assignment { mediator: Some(p.mediator.clone()), tier: tier as i32, ..Default::default() };
                    Box::pin(async move { m.assign(keyed(AssignRequest { case_id: id, assignment: Some(a) }, &key)).await.and_then(answered_case) })
                }
                Step::Progress => {
                    let pr = Progress { stage: ProgressStage::SessionHeld as i32, summary: "已组织双方面对面调解一次，分歧缩小".into(), sessions_held: 1, ..Default::default() };
                    Box::pin(async move { m.report_progress(keyed(ReportProgressRequest { case_id: id, progress: Some(pr) }, &key)).await.and_then(answered_case) })
                }
                Step::Supervise => {
                    let notice = SupervisionNotice { level: SupervisionLevel::Ordinary as i32, instructions: "请加快调处进度，十日内反馈化解情况".into(), supervisor: "督查科".into(), ..Default::default() };
                    Box::pin(async move { r.supervise(keyed(SuperviseRequest { case_id: id, notice: Some(notice) }, &key)).await.and_then(answered_case) })
                }
                Step::Settle { confirmation } => {
                    let o = Outcome {
                        kind: Some(outcome::Kind::Settled(outcome::Settled {
                            agreement: Some(digest()),
                            terms: vec![format!("被申请方于三十日内支付人民币{}元", p.settled_fen / 100), "双方就本纠纷再无其他争议".into()],
                            amount: Some(Money::cny(p.settled_fen)),
                            confirmation_intended: confirmation,
                            ..Default::default()
                        })),
                    };
                    Box::pin(async move { m.report_outcome(keyed(ReportOutcomeRequest { case_id: id, outcome: Some(o) }, &key)).await.and_then(answered_case) })
                }
                Step::Fail => {
                    let o = Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed { reason: FailureReason::NoAgreement as i32, explanation: "双方对赔偿数额分歧较大，未能达成协议".into() })) };
                    Box::pin(async move { m.report_outcome(keyed(ReportOutcomeRequest { case_id: id, outcome: Some(o) }, &key)).await.and_then(answered_case) })
                }
                Step::Withdraw => {
                    let o = Outcome { kind: Some(outcome::Kind::Withdrawn(outcome::Withdrawn { party_id: "p1".into(), reason: "原告申请撤回调解".into() })) };
                    Box::pin(async move { m.report_outcome(keyed(ReportOutcomeRequest { case_id: id, outcome: Some(o) }, &key)).await.and_then(answered_case) })
                }
                Step::RequestConfirmation => {
                    let c = ConfirmationRequest { agreement: Some(digest()), applicant_party_ids: vec!["p1".into(), "p2".into()], ..Default::default() };
                    Box::pin(async move { m.request_confirmation(keyed(RequestConfirmationRequest { case_id: id, request: Some(c) }, &key)).await.and_then(answered_case) })
                }
                Step::Decide(kind) => {
                    let numbered = matches!(kind, ConfirmationDecisionKind::Granted | ConfirmationDecisionKind::Denied);
                    let d = ConfirmationDecision {
                        decision: kind as i32,
                        document_number: if numbered { doc("湘1003民特") } else { String::new() },
                        reason: if kind == ConfirmationDecisionKind::Denied { "协议内容违反法律强制性规定".into() } else { String::new() },
                        ..Default::default()
                    };
                    let mut c = CourtServiceClient::new(ch);
                    Box::pin(async move { c.decide_confirmation(keyed(DecideConfirmationRequest { case_id: id, decision: Some(d) }, &key)).await.and_then(answered_case) })
                }
                Step::Perform => {
                    let perf = Performance { status: PerformanceStatus::Performed as i32, amount_performed: Some(Money::cny(p.settled_fen)), note: "已当场履行完毕".into() };
                    Box::pin(async move { m.record_performance(keyed(RecordPerformanceRequest { case_id: id, performance: Some(perf) }, &key)).await.and_then(answered_case) })
                }
                Step::FollowUp => {
                    let f = FollowUp { method: FollowUpMethod::Phone as i32, conducted_by: p.mediator.name.clone(), summary: "电话回访，双方表示满意，未再发生纠纷".into(), satisfaction: Satisfaction::Satisfied as i32, recurred: false };
                    Box::pin(async move { m.record_follow_up(keyed(RecordFollowUpRequest { case_id: id, follow_up: Some(f) }, &key)).await.and_then(answered_case) })
                }
                Step::Close(basis) => {
                    let c = Closure { basis: basis as i32, summary: "案结事了".into(), closed_by: p.clerk.clone() };
                    Box::pin(async move { m.close(keyed(CloseRequest { case_id: id, closure: Some(c) }, &key)).await.and_then(answered_case) })
                }
                Step::Recognize => {
                    let rec = AgreementRecognition { agreement: Some(digest()), document_number: doc("北公(治)调确字"), recognised_by: "刘警官".into(), ..Default::default() };
                    let mut c = PoliceServiceClient::new(ch);
                    Box::pin(async move { c.recognize_agreement(keyed(RecognizeAgreementRequest { case_id: id, recognition: Some(rec) }, &key)).await.and_then(answered_case) })
                }
                Step::Review => {
                    let rev = ReconciliationReview { conclusion: ReviewConclusion::VoluntaryAndLawful as i32, agreement: Some(digest()), reviewed_by: "陈检察官".into(), ..Default::default() };
                    let mut c = ProcuratorateServiceClient::new(ch);
                    Box::pin(async move { c.review_reconciliation(keyed(ReviewReconciliationRequest { case_id: id, review: Some(rev) }, &key)).await.and_then(answered_case) })
                }
                Step::Dispose(kind) => {
                    let d = DispositionNotice { disposition: kind as i32, document_number: doc("北处字"), summary: "依法处理完毕".into(), ..Default::default() };
                    Box::pin(async move { r.dispose(keyed(DisposeRequest { case_id: id, disposition: Some(d) }, &key)).await.and_then(answered_case) })
                }
                Step::HandOn { escalate } => {
                    let town = town.clone();
                    if escalate {
                        let e = Escalation {
                            from_tier: MediationTier::Village as i32,
                            to_tier: MediationTier::Town as i32,
                            to_agency: Some(town),
                            reason: "涉及两村土地边界，需镇调委会组织联合调处".into(),
                        };
                        Box::pin(async move { m.escalate(keyed(EscalateRequest { case_id: id, escalation: Some(e) }, &key)).await.and_then(answered_case) })
                    } else {
                        let r = Redirect { to: Some(town), reason: "当事人均居住在白露塘镇，由镇调委会就近调解".into() };
                        Box::pin(async move { m.redirect(keyed(RedirectRequest { case_id: id, redirect: Some(r) }, &key)).await.and_then(answered_case) })
                    }
                }
                Step::ClosePetition => {
                    let req = ClosePetitionRequest { case_id: id, document_number: doc("北信办结"), summary: "矛盾化解，信访事项办结".into() };
                    let mut c = PetitionServiceClient::new(ch);
                    Box::pin(async move { c.close_petition(keyed(req, &key)).await.and_then(answered_case) })
                }
            }
        }
    }

    /// Drives one case; `report` is filled in as it goes, so a failure still says how far it got.
    async fn drive(&self, plan: &CasePlan, cfg: &DemoConfig, report: &mut CaseReport) -> CliResult<()> {
        let referrer = self.agent(plan.referrer);
        let mut desk = plan.holder;
        let mut holder = self.agent(desk);
        let deadline = || Instant::now() + cfg.step_timeout;
        let submit = SubmitReferralRequest { to: Some(AgencyRef::from(&holder.who)), case_code: plan.case_code.clone(), referral: Some(plan.referral.clone()) };
        let view = call(cfg, "SubmitReferral", &format!("submitting {}", plan.case_code), deadline(), || {
            let (mut r, req) = (referrer.referrals(), submit.clone());
            Box::pin(async move { r.submit_referral(req).await.and_then(answered_case) })
        })
        .await?;
        report.case_id = Some(view.case_id.clone());
        let mut last = sync(cfg, &view, holder, deadline()).await?;
        report.state = Some(last.state.clone());
        for (i, step) in plan.steps.iter().copied().take(plan.stop).enumerate() {
            let (actor, other) = match step.action()?.side {
                Side::Referrer => (referrer, holder),
                Side::Holder => (holder, referrer),
            };
            let label = step.label()?;
            let key = format!("demo-{}-{}-{}-{label}", plan.tag, plan.n, i + 1);
            let what = format!("{label} of {} as {}", plan.case_code, actor.who);
            // Every step carries its key: a rerun of the seed is answered with the case as it
            // is, nothing sent twice (the services keep the keys).
            let acted = call(cfg, step.action()?.rpc, &what, deadline(), self.request(plan, desk, step, &view.case_id, &key)).await?;
            last = sync(cfg, &acted, other, deadline()).await?;
            if let Step::HandOn { .. } = step {
                // The town committee holds the case from now on, once the hand-over reached it.
                desk = Desk::Town;
                holder = self.agent(desk);
                last = held_by(cfg, &acted, holder, deadline()).await?;
            }
            report.steps_done = i + 1;
            report.state = Some(last.state.clone());
        }
        Ok(())
    }
}

/// Runs the demo: plans `cfg.cases` cases and drives them, `cfg.concurrency` at a time;
/// `progress` advances by one per case.
pub async fn run(agencies: &Agencies, cfg: &DemoConfig, progress: &ProgressBar) -> DemoReport {
    let started = Instant::now();
    let year = chrono::Utc::now().with_timezone(&output::china()).year();
    let plans: Vec<CasePlan> = (1..=cfg.cases).map(|n| plan_case(cfg, n, year)).collect();
    let mut cases: Vec<CaseReport> = futures::stream::iter(plans.iter())
        .map(|plan| async move {
            let mut report = CaseReport {
                n: plan.n,
                case_code: plan.case_code.clone(),
                case_id: None,
                channel: plan.channel,
                plan: plan.name,
                steps_planned: plan.stop,
                steps_total: plan.steps.len(),
                steps_done: 0,
                state: None,
                error: None,
            };
            if let Err(e) = agencies.drive(plan, cfg, &mut report).await {
                progress.suspend(|| eprintln!("duijie: demo case {} failed after {} step(s): {e}", plan.case_code, report.steps_done));
                report.error = Some(e);
            }
            progress.set_message(plan.case_code.clone());
            progress.inc(1);
            report
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await;
    cases.sort_by_key(|c| c.n);
    DemoReport { seed: cfg.seed, mixed: cfg.mixed, cases, elapsed: started.elapsed() }
}

/// `duijie demo`: runs the demo with a progress bar on stderr (when it is a terminal) and prints
/// a summary; exit 0 only if every case went as planned.
pub async fn run_cli(ctx: &Ctx, args: DemoArgs) -> CliResult<()> {
    if args.cases == 0 {
        return Err(CliError::Usage("--cases must be at least 1".into()));
    }
    let seed = args.seed.unwrap_or_else(|| rand::rng().random_range(1..100_000));
    let cfg = DemoConfig {
        cases: args.cases,
        seed,
        mixed: args.mixed,
        concurrency: args.concurrency,
        step_timeout: Duration::from_secs(args.step_timeout_secs),
        poll: POLL,
        observer: None,
        arrivals: None,
    };
    let agencies = Agencies::from_ctx(ctx)?;
    let cfg = if args.watch {
        let arrivals = crate::feed::Arrivals::follow(&agencies.all())
            .await
            .map_err(|e| CliError::Unavailable(format!("following the agencies' live feeds: {e:#}")))?;
        DemoConfig { arrivals: Some(arrivals), ..cfg }
    } else {
        cfg
    };
    let progress = ProgressBar::with_draw_target(
        Some(u64::from(cfg.cases)),
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:32.cyan/blue} {pos}/{len} cases  {msg}") {
        progress.set_style(style.progress_chars("=> "));
    }
    progress.enable_steady_tick(Duration::from_millis(200));
    let report = run(&agencies, &cfg, &progress).await;
    progress.finish_and_clear();
    if ctx.json {
        output::print_json(&report.json());
    } else {
        for c in &report.cases {
            println!(
                "{:<28} {} {:<14} {:<44} {:>2}/{:<2} {}",
                c.case_code,
                output::channel_zh(c.channel as i32),
                c.channel.as_str(),
                c.plan,
                c.steps_done,
                c.steps_total,
                if c.error.is_some() { "DRIVER FAILED".to_owned() } else { c.state.clone().unwrap_or_default() }
            );
        }
        let states: Vec<String> = report.by_state().iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!(
            "demo seed {}{}: {} cases in {:.1} s — {}; {} failed",
            report.seed,
            if report.mixed { " (mixed)" } else { "" },
            report.cases.len(),
            report.elapsed.as_secs_f64(),
            states.join(", "),
            report.failures().count()
        );
    }
    let failed: Vec<&CaseReport> = report.failures().collect();
    match failed.first().and_then(|c| c.error.as_ref()) {
        None => Ok(()),
        Some(first) => {
            let msg = format!("{} of {} demo cases failed (first: {first})", failed.len(), report.cases.len());
            Err(match first {
                CliError::Refused(_) => CliError::Refused(msg),
                CliError::Unavailable(_) => CliError::Unavailable(msg),
                CliError::Usage(_) => CliError::Usage(msg),
                _ => CliError::Failure(anyhow::anyhow!(msg)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64, mixed: bool) -> DemoConfig {
        DemoConfig { cases: 12, seed, mixed, concurrency: 1, step_timeout: Duration::from_secs(1), poll: POLL, observer: None, arrivals: None }
    }

    #[test]
    fn identity_numbers_carry_valid_check_characters() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let id = identity_number(&mut rng);
            assert_eq!(id.len(), 18);
            // GB 11643: the weighted sum of all 18 (X = 10) is 1 mod 11.
            let weights = [7u32, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2, 1];
            let sum: u32 = id.chars().zip(weights).map(|(c, w)| if c == 'X' { 10 } else { c.to_digit(10).unwrap_or(99) } * w).sum();
            assert_eq!(sum % 11, 1, "{id}");
        }
        assert!(["11010519491231002X", "440524188001010014"].iter().all(|id| {
            let weights = [7u32, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2, 1];
            id.chars().zip(weights).map(|(c, w)| if c == 'X' { 10 } else { c.to_digit(10).unwrap_or(99) } * w).sum::<u32>() % 11 == 1
        }));
    }

    #[test]
    fn plans_are_deterministic_and_cover_every_channel() {
        let a: Vec<CasePlan> = (1..=12).map(|n| plan_case(&cfg(7, false), n, 2026)).collect();
        let b: Vec<CasePlan> = (1..=12).map(|n| plan_case(&cfg(7, false), n, 2026)).collect();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.case_code.as_str(), x.steps.clone(), x.referral.clone()), (y.case_code.as_str(), y.steps.clone(), y.referral.clone()));
            assert_eq!(x.stop, x.steps.len(), "not mixed: every step");
        }
        let channels: Vec<Channel> = a.iter().map(|p| p.channel).collect();
        assert_eq!(&channels[..4], [Channel::Court, Channel::Police, Channel::Petition, Channel::Procuratorate]);
        let clocks: Vec<i32> = a.iter().filter(|p| p.channel == Channel::Court).map(|p| p.referral.clock_policy.as_ref().map_or(0, |c| c.kind)).collect();
        assert_eq!(clocks, [ClockPolicyKind::CourtOrdinary as i32, ClockPolicyKind::CourtSimplified as i32, ClockPolicyKind::CourtPreFiling as i32]);
        assert_eq!(a[0].case_code, "JF-431003-2026-D7-0001");
        // Every plan ends the case: with a closure or the referrer's final word.
        for p in &a {
            assert!(matches!(p.steps.last(), Some(Step::Close(_) | Step::Dispose(_) | Step::ClosePetition)), "{:?}", p.steps);
        }
        let mixed: Vec<CasePlan> = (1..=12).map(|n| plan_case(&cfg(7, true), n, 2026)).collect();
        assert!(mixed.iter().all(|p| p.stop <= p.steps.len() && p.case_code.contains("D7M-")));
    }

    #[test]
    fn every_step_is_an_action_of_the_table_taken_by_its_side() {
        for seed in [1, 3, 7, 42] {
            for p in (1..=48).map(|n| plan_case(&cfg(seed, false), n, 2026)) {
                for step in &p.steps {
                    let action = step.action().unwrap_or_else(|e| panic!("{step:?}: {e}"));
                    let kind = match action.side {
                        Side::Referrer => p.referrer.parts().0,
                        Side::Holder => AgencyKind::Mediation,
                    };
                    assert!(action.taken_by(action.side, kind), "{step:?} by {kind} ({})", p.name);
                    let label = step.label().unwrap_or_default();
                    let legacy = matches!(step, Step::Recognize | Step::Review);
                    assert!(label == action.key || legacy || action.fields.iter().any(|f| f.input == duijie_domain::actions::Input::Choice), "{step:?}: {label}");
                }
            }
        }
        assert_eq!(Step::Recognize.label().ok(), Some("recognize_agreement"), "the key earlier runs wrote");
        assert_eq!(Step::HandOn { escalate: true }.label().ok(), Some("escalate"));
    }
}
