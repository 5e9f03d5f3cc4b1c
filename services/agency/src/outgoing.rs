//! What an agency sends: a new referral, or a step on a case it is one end of. The desk
//! ([`Case::decide`]) says whether the step is allowed and what it does; here the case row, the
//! timeline and the outbox change in one transaction.

use anyhow::Context as _;
use duijie_common::envelope::{self, Header};
use duijie_common::outbox;
use duijie_common::server::ApiError;
use duijie_domain::case::channel_of;
use duijie_domain::{AgencyNode, Case, CaseState, Effects, Message, Role};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, AgencyRef, ClockPolicyKind, ConfirmationRequest, Envelope, ForwardedCase, MessageKind, Referral};
use prost::Message as _;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::idempotency::{self, Claim};
use crate::rules::{self, refused};
use crate::store::{self, Direction, NewReferral, StoredCase};
use crate::view::CaseView;
use crate::Agency;

impl Agency {
    /// Sends a referral from `caller` to a mediation body. A retried submit (same
    /// `client_request_id`) returns the case of the first one.
    pub async fn submit_referral(&self, caller: &AgencyNode, to: &AgencyNode, case_code: &str, referral: Referral) -> Result<CaseView, ApiError> {
        self.check_serves(caller)?;
        if !MessageKind::Referral.allowed_senders().contains(&caller.kind()) {
            return Err(ApiError::PermissionDenied(format!("{caller}: a {} may not send referrals", caller.kind().as_str())));
        }
        if to.kind() != AgencyKind::Mediation {
            return Err(ApiError::invalid("to", "referrals go to a mediation body"));
        }
        self.check_known(to, "to")?;
        if case_code.trim().is_empty() {
            return Err(ApiError::invalid("case_code", "is required"));
        }
        duijie_proto::limits::check_case_code("case_code", case_code)?;
        if referral.forwarded.is_some() {
            return Err(ApiError::invalid("referral.forwarded", "is set only by a mediation body handing a case on"));
        }
        rules::validate_referral(&referral)?;
        if let Some(g) = &self.gate {
            g.check()?;
        }
        let channel = channel_of(caller.kind()).ok_or_else(|| ApiError::PermissionDenied("no channel for this agency".into()))?;
        self.open_case(caller, Case::referred(channel, caller.clone(), to.clone()), case_code, referral).await
    }

    /// Registers a dispute `caller`, a mediation body, took in itself (自行受理): a case it
    /// holds from the start, accepted, whose messages go to the audit store only. A retried
    /// register (same `client_request_id`) returns the case of the first one.
    pub async fn register_case(&self, caller: &AgencyNode, case_code: &str, referral: Referral) -> Result<CaseView, ApiError> {
        self.check_serves(caller)?;
        if caller.kind() != AgencyKind::Mediation {
            return Err(ApiError::PermissionDenied(format!("{caller}: only a mediation body registers a case it took in itself")));
        }
        if case_code.trim().is_empty() {
            return Err(ApiError::invalid("case_code", "is required"));
        }
        duijie_proto::limits::check_case_code("case_code", case_code)?;
        if referral.forwarded.is_some() {
            return Err(ApiError::invalid("referral.forwarded", "is set only by a mediation body handing a case on"));
        }
        if referral.intake.is_none() {
            return Err(ApiError::invalid("referral.intake", "is required: how the dispute came in, its risk level and who received it"));
        }
        rules::validate_referral(&referral)?;
        if let Some(g) = &self.gate {
            g.check()?;
        }
        self.open_case(caller, Case::registered(caller.clone()), case_code, referral).await
    }

    /// Creates `case`, sent by `caller` with `referral`, and stages its first message.
    async fn open_case(&self, caller: &AgencyNode, case: Case, case_code: &str, referral: Referral) -> Result<CaseView, ApiError> {
        let (channel, to) = (case.channel, case.holder.clone());
        let case_id = Uuid::now_v7();
        // Sealed before anything is stored or staged: no copy ever holds the parties' data in
        // clear. (A retried submit gets a key for a case id it then does not use.)
        let referral = self.sealed(caller, case_id, &to, referral).await?;
        let header = Header { case_id, case_code: case_code.to_owned(), channel, sender: caller.clone(), recipient: to, causation_id: None };
        let mut env = envelope::build(&header, Payload::Referral(referral.clone()));
        let new = NewReferral {
            case_id,
            case_code,
            case: &case,
            clock_policy: referral.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind()),
            client_request_id: &referral.client_request_id,
            referral: referral.encode_to_vec(),
        };
        let mut tx = self.db.begin().await.context("beginning")?;
        let inserted = match store::insert_referred(&mut tx, &new).await {
            Ok(inserted) => inserted,
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("cases_sent_case_code") => {
                return Err(ApiError::invalid("case_code", format!("{case_code} is already used by another case of {caller}")));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("creating the case").into()),
        };
        if !inserted {
            // A retry (or a concurrent duplicate) of a submit that already created the case:
            // found on this connection (the conflicting insert waited for the first submit's
            // commit, so read committed sees it), then read from a snapshot once it is given
            // back (this call did nothing, so a "busy" answer to it is true).
            let existing = store::referred_by_request(&mut tx, caller, &referral.client_request_id).await?;
            drop(tx);
            return self.view(caller, existing).await;
        }
        self.record_out(&mut tx, caller, &mut env, case.lifecycle.state).await?;
        // The answer is read in the transaction itself (which holds the new case): a call that
        // acted is not then refused for want of another connection, so a "busy" answer always
        // means nothing was done.
        let loaded = self.load_view(&mut tx, caller, case_id).await?;
        tx.commit().await.context("committing the referral")?;
        self.wake();
        tracing::debug!(case_id = %case_id, case_code, "case opened; its first message is staged");
        self.build_view(caller, loaded)
    }

    /// Sends `payload` about `case_id` from `caller` to the other side of the handoff, if the
    /// caller may send it and the case's state allows it.
    pub async fn send(&self, caller: &AgencyNode, case_id: Uuid, payload: Payload) -> Result<CaseView, ApiError> {
        self.send_once(caller, case_id, payload, None).await
    }

    /// [`send`](Self::send), at most once per `request_id` (an idempotency key of the caller):
    /// a retry with the same key answers with the case as it is now, without acting again.
    pub async fn send_once(&self, caller: &AgencyNode, case_id: Uuid, payload: Payload, request_id: Option<&str>) -> Result<CaseView, ApiError> {
        let kind = payload.kind();
        self.check_serves(caller)?;
        // The API checked the bounds already; this holds any other caller of the core to them
        // before anything reaches the database or the bus.
        rules::check_bounds(&payload, rules::request_field(&payload))?;
        if !kind.allowed_senders().contains(&caller.kind()) {
            return Err(ApiError::PermissionDenied(format!("{caller}: a {} may not send {kind}", caller.kind().as_str())));
        }
        // A revised referral's parties are sealed like the first ones; the key is fetched before
        // the transaction so no connection waits on the key service.
        let amend_key = match (&payload, &self.keys) {
            // The key was made at submit; the holder named only matters for a key made now (a
            // case opened before party data was sealed), which the log's holder then governs.
            (Payload::Amendment(a), Some(keys)) if a.revised.is_some() => Some(keys.issue(caller, case_id, caller).await.map_err(crate::key_unavailable)?),
            _ => None,
        };
        let mut tx = self.db.begin().await.context("beginning")?;
        // Before the first write: the live feed's order within a case (store::lock_cases).
        store::lock_cases(&mut tx, &[store::case_lock_key(case_id)]).await?;
        let Some(stored) = store::locked_case(&mut tx, caller, case_id).await? else {
            // On this connection: a call never waits for a second one while it holds one.
            return Err(self.not_owned(&mut tx, caller, case_id).await);
        };
        if let Some(key) = request_id.filter(|k| !k.is_empty())
            && let Claim::Retry { case_id: earlier } = idempotency::claim(&mut tx, caller, key, case_id).await?
        {
            if earlier != case_id {
                return Err(ApiError::invalid("idempotency-key", format!("already used for case {earlier}")));
            }
            let loaded = self.load_view(&mut tx, caller, case_id).await?;
            drop(tx);
            return self.build_view(caller, loaded);
        }
        // Only the two ends of the handoff act on a case; a committee that handed it on is out.
        if stored.case.role_of(caller) == Role::Other {
            return Err(ApiError::PermissionDenied(format!("{caller} no longer holds case {case_id}")));
        }
        if kind == MessageKind::DispositionNotice && store::disposition_told(&mut tx, caller, case_id).await? {
            return Err(ApiError::FailedPrecondition(format!(
                "case is {}; its disposition was told already (a referrer tells it once)",
                stored.case.lifecycle.state
            )));
        }
        let mut revised = rules::check_payload(&payload, &stored.referral)?;
        let mut payload = payload;
        if let Some(key) = &amend_key {
            if let Payload::Amendment(a) = &mut payload
                && let Some(r) = &mut a.revised
            {
                duijie_common::sealing::seal_referral(key, case_id, r).map_err(ApiError::Unexpected)?;
            }
            if let Some((bytes, _)) = &mut revised {
                let mut r = Referral::decode(bytes.as_slice()).context("decoding the amended referral")?;
                duijie_common::sealing::seal_referral(key, case_id, &mut r).map_err(ApiError::Unexpected)?;
                *bytes = r.encode_to_vec();
            }
        }
        let Effects::Send { lifecycle, new_holder, recipient, copy_to, hand_over, court } =
            stored.case.decide(Message::Outgoing { sender: caller, payload: &payload }).map_err(refused)?
        else {
            return Err(anyhow::anyhow!("the desk answered a message to send with something else").into());
        };
        if let Some(to) = &hand_over {
            self.check_known(to, if kind == MessageKind::Redirect { "redirect.to" } else { "escalation.to_agency" })?;
        }
        if let Payload::ConfirmationRequest(r) = &mut payload {
            self.check_application_limit(&mut tx, caller, case_id, r).await?;
        }
        if let (Some(c), Payload::ConfirmationRequest(r)) = (&court, &mut payload) {
            self.check_known(c, "confirmation_request.court")?;
            // The court did not refer the case: it opens its copy from these.
            r.case_referrer = Some(AgencyRef::from(&stored.case.referrer));
            r.case_referral = Some(Referral::decode(stored.referral.as_slice()).context("decoding the stored referral")?);
        }
        let header = Header {
            case_id,
            case_code: stored.case_code.clone(),
            channel: stored.case.channel,
            sender: caller.clone(),
            recipient,
            causation_id: store::last_inbound(&mut tx, caller, case_id).await?,
        };
        let copy = copy_to.map(|to| (to, payload.clone()));
        let mut env = envelope::build(&header, payload);
        store::update(&mut tx, caller, case_id, &lifecycle, new_holder.as_ref(), court.as_ref(), revised.as_ref()).await?;
        self.record_out(&mut tx, caller, &mut env, lifecycle.state).await?;
        if let Some((to, payload)) = copy {
            // The referrer's copy (抄送) of a confirmation another court examines: a message of
            // its own, caused by the original, staged with it.
            let header = Header { recipient: to, causation_id: Uuid::parse_str(&env.message_id).ok(), ..header };
            let mut copy = envelope::build(&header, payload);
            self.record_out(&mut tx, caller, &mut copy, lifecycle.state).await?;
        }
        if let Some(to) = &hand_over {
            self.forward(&mut tx, caller, &stored, to, &env, lifecycle.state).await?;
        }
        // The answer from this transaction (which holds the case row), as for a submit.
        let loaded = self.load_view(&mut tx, caller, case_id).await?;
        tx.commit().await.context("committing")?;
        self.wake();
        self.build_view(caller, loaded)
    }

    /// Judicial confirmation is applied for within 30 days of the agreement taking effect
    /// (人民调解法 第三十三条): from `agreement_signed_at`, or else from the settlement the case
    /// reported (then written into the application, so the court sees the date it was judged by).
    async fn check_application_limit(&self, tx: &mut PgConnection, caller: &AgencyNode, case_id: Uuid, r: &mut ConfirmationRequest) -> Result<(), ApiError> {
        let now = chrono::Utc::now();
        let signed = match envelope::from_timestamp(r.agreement_signed_at.as_ref()) {
            Some(t) if t > now + chrono::Duration::days(1) => {
                return Err(ApiError::invalid("request.agreement_signed_at", "is in the future"));
            }
            Some(t) => t,
            None => {
                let Some(t) = store::settled_at(tx, caller, case_id).await? else { return Ok(()) };
                r.agreement_signed_at = Some(envelope::timestamp(t));
                t
            }
        };
        let due = self.calendar.due(signed, duijie_domain::calendar::Period::Days(30));
        if now > due {
            return Err(ApiError::FailedPrecondition(format!(
                "judicial confirmation must be applied for within 30 days of the agreement (人民调解法 第三十三条): \
                 the agreement of {} passed its limit on {}; the parties may instead change the agreement or sue on it",
                signed.format("%Y-%m-%d"),
                due.format("%Y-%m-%d")
            )));
        }
        Ok(())
    }

    /// Hands the case to `to`: a referral carrying the original referrer, why it moves, and the
    /// case's history, so `to` answers the referrer directly and its clocks keep running.
    async fn forward(
        &self,
        tx: &mut PgConnection,
        caller: &AgencyNode,
        stored: &StoredCase,
        to: &AgencyNode,
        handoff: &Envelope,
        state_after: CaseState,
    ) -> Result<(), ApiError> {
        let events = store::events(tx, caller, &[stored.case_id]).await.context("reading the case's history")?;
        // A referral forwarded before carries its own history: keep each message once.
        let history = events
            .into_iter()
            .map(|ev| {
                let mut env = Envelope::decode(ev.envelope.as_slice()).context("decoding a stored envelope")?;
                if let Some(Payload::Referral(r)) = &mut env.payload
                    && let Some(f) = &mut r.forwarded
                {
                    f.history.clear();
                    return Ok(env.encode_to_vec());
                }
                Ok(ev.envelope)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut referral = Referral::decode(stored.referral.as_slice()).context("decoding the stored referral")?;
        // The proof of who referred the case goes along: kept from the hand-over that brought
        // the case here, or the original referral as this body received it.
        let (original_envelope, original_signature, original_signer_cert) = match referral.forwarded.take() {
            Some(f) => (f.original_envelope, f.original_signature, f.original_signer_cert),
            None => store::referral_proof(tx, caller, stored.case_id).await.context("reading the referral's proof")?,
        };
        referral.forwarded = Some(ForwardedCase {
            original_referrer: Some(AgencyRef::from(&stored.case.referrer)),
            forwarded_by: Some(AgencyRef::from(caller)),
            reason: handoff.kind,
            history,
            original_envelope,
            original_signature,
            original_signer_cert,
        });
        let header = Header {
            case_id: stored.case_id,
            case_code: stored.case_code.clone(),
            channel: stored.case.channel,
            sender: caller.clone(),
            recipient: to.clone(),
            causation_id: Uuid::parse_str(&handoff.message_id).ok(),
        };
        let mut env = envelope::build(&header, Payload::Referral(referral));
        self.record_out(tx, caller, &mut env, state_after).await?;
        Ok(())
    }

    /// Stages `env` and records it in the owner's timeline.
    /// Refused before staging when the recipient is not in the directory: nothing was done.
    async fn record_out(&self, tx: &mut PgConnection, owner: &AgencyNode, env: &mut Envelope, state_after: CaseState) -> Result<(), ApiError> {
        if let Some(why) = self.unknown_recipient(env) {
            return Err(ApiError::FailedPrecondition(format!("{why}: nothing was sent")));
        }
        outbox::stage(tx, &self.topology, env).await.context("staging the envelope")?;
        store::insert_event(tx, owner, env, Direction::Out, state_after).await?;
        Ok(())
    }
}
