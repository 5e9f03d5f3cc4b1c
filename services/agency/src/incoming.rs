//! What reaches an agency over the bus: [`Agency`] is the inbox [`Handler`] of the nodes it
//! serves. A referral opens the node's copy of a case; every other message is decided by the
//! desk ([`Case::decide`]) — applied, recorded, or passed on to the current holder — and what
//! the node durably took is acknowledged with delivery evidence, all in the inbox's transaction.

use chrono::Utc;
use duijie_common::envelope::{self, Header};
use duijie_common::inbox::{HandleError, Handler, Inbound};
use duijie_common::outbox;
use duijie_domain::agency::ref_str;
use duijie_domain::{AgencyNode, Case, CaseState, Effects, Lifecycle, Message};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, AgencyRef, Channel, ClockPolicyKind, ConfirmationRequest, DeliveryEvidence, Envelope, EvidenceType, PassedOn, Referral};
use prost::Message as _;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Agency;
use crate::rules::{self, rejected};
use crate::store::{self, Direction};

fn malformed(e: impl std::fmt::Display) -> HandleError {
    HandleError::Rejected(e.to_string())
}

/// A database error of the store: about the data (dead-letter the message), or transient (hold
/// the batch and retry), as [`duijie_common::db::is_transient`] tells.
fn db(e: anyhow::Error) -> HandleError {
    match e.downcast_ref::<sqlx::Error>() {
        Some(se) if !duijie_common::db::is_transient(se) => HandleError::Rejected(format!("database refused: {se}")),
        _ => HandleError::Transient(e),
    }
}

impl Agency {
    /// Opens `owner`'s copy of the case a referral brings (or takes back a case this body handed
    /// on, coming back from its holder), with the history a handed-on case carries.
    async fn take_referral(
        &self,
        conn: &mut PgConnection,
        owner: &AgencyNode,
        sender: &AgencyNode,
        env: &Envelope,
        referral: &Referral,
        msg: &Inbound,
    ) -> Result<CaseState, HandleError> {
        let case_id = Uuid::parse_str(&env.case_id).map_err(malformed)?;
        let case = Case::receive(owner, sender, env.channel(), referral).map_err(rejected)?;
        if let Some(f) = &referral.forwarded {
            self.check_referral_proof(env, sender, f)?;
        }
        let clock = referral.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind());
        let forwarded_by = referral.forwarded.as_ref().map(|_| sender);
        let taken = store::insert_received(conn, owner, case_id, &env.case_code, &case, clock, &referral.encode_to_vec(), forwarded_by).await?;
        if !taken {
            return Err(HandleError::Rejected(format!("case {case_id} already exists here")));
        }
        // The first holder keeps the referral as its referrer signed it: the proof a hand-over
        // carries on.
        if referral.forwarded.is_none()
            && let Some(sig) = &msg.signature
        {
            store::keep_referral_proof(conn, owner, case_id, &msg.bytes, &sig.signature, &sig.cert).await?;
        }
        if let Some(f) = &referral.forwarded {
            // A self-accepted case's history starts accepted (its registration is its referral).
            let mut lc = if env.channel() == Channel::SelfIntake { Lifecycle::at(CaseState::Accepted, None) } else { Lifecycle::referred() };
            for bytes in &f.history {
                let prior = Envelope::decode(bytes.as_slice()).map_err(|e| HandleError::Rejected(format!("history: {e}")))?;
                prior.check().map_err(|e| HandleError::Rejected(format!("history: {e}")))?;
                if prior.case_id != env.case_id {
                    return Err(HandleError::Rejected("history: a message of another case".into()));
                }
                if let Some(p) = &prior.payload
                    && !matches!(p, Payload::Referral(_))
                {
                    lc.follow(p);
                }
                store::insert_event(conn, owner, &prior, Direction::Prior, lc.state).await.map_err(db)?;
            }
        }
        Ok(case.lifecycle.state)
    }

    /// Opens `court`'s copy of a case `sender` applies to it for judicial confirmation, when the
    /// court does not have the case (it did not refer it): from the referrer and referral the
    /// application carries. `false` when the court has the case already (its own referral, or a
    /// redelivered application), which then goes through the desk as any message does.
    async fn open_application(
        &self,
        conn: &mut PgConnection,
        court: &AgencyNode,
        sender: &AgencyNode,
        env: &Envelope,
        request: &ConfirmationRequest,
    ) -> Result<bool, HandleError> {
        let case_id = Uuid::parse_str(&env.case_id).map_err(malformed)?;
        if store::case_exists(conn, court, case_id).await.map_err(db)? {
            return Ok(false);
        }
        if !court.is(request.court.as_ref()) {
            return Err(HandleError::Rejected(format!("a confirmation application for {} reached {court}", ref_str(request.court.as_ref()))));
        }
        if sender.kind() != AgencyKind::Mediation {
            return Err(HandleError::Rejected(format!("{sender} does not apply for judicial confirmation")));
        }
        let referrer = AgencyNode::from_ref(request.case_referrer.as_ref())
            .map_err(|e| HandleError::Rejected(format!("the application names no valid referrer of the case: {e}")))?;
        let referral = request.case_referral.as_ref().ok_or_else(|| HandleError::Rejected("the application carries no case_referral".into()))?;
        let case = Case::applied_to(court.clone(), env.channel(), referrer, sender.clone());
        let clock = referral.clock_policy.as_ref().map_or(ClockPolicyKind::Unspecified, |c| c.kind());
        if !store::insert_applied(conn, court, case_id, &env.case_code, &case, clock, &referral.encode_to_vec()).await.map_err(|e| db(e.into()))? {
            return Ok(false);
        }
        store::insert_event(conn, court, env, Direction::In, case.lifecycle.state).await.map_err(db)?;
        Ok(true)
    }

    /// A handed-on case names its original referrer: the body handing it on must prove it with
    /// the referral that referrer signed (unless it is that referrer itself: a case it
    /// registered). Without a verifier (the core alone) nothing is checked.
    fn check_referral_proof(&self, env: &Envelope, sender: &AgencyNode, f: &duijie_proto::v1::ForwardedCase) -> Result<(), HandleError> {
        let Some(verifier) = &self.verifier else { return Ok(()) };
        let referrer = AgencyNode::from_ref(f.original_referrer.as_ref()).map_err(malformed)?;
        if &referrer == sender {
            return Ok(());
        }
        let refuse = |why: String| HandleError::Rejected(format!("the handed-on case does not prove its referrer {referrer}: {why}"));
        if f.original_envelope.is_empty() {
            return Err(refuse("no original referral".into()));
        }
        let original = Envelope::decode(f.original_envelope.as_slice()).map_err(|e| refuse(format!("undecodable: {e}")))?;
        let is_original_referral = matches!(&original.payload, Some(Payload::Referral(r)) if r.forwarded.is_none());
        if !is_original_referral || original.case_id != env.case_id || AgencyNode::from_ref(original.sender.as_ref()).ok().as_ref() != Some(&referrer) {
            return Err(refuse("it is not this case's referral from that referrer".into()));
        }
        let sig = duijie_common::signing::Signature { signature: f.original_signature.clone(), cert: f.original_signer_cert.clone() };
        verifier.verify_envelope(&original, &f.original_envelope, Some(&sig), Utc::now()).map_err(|e| refuse(e.to_string()))?;
        Ok(())
    }

    /// Delivery evidence back to the sender for what `owner` durably took.
    async fn evidence(&self, conn: &mut PgConnection, owner: &AgencyNode, env: &Envelope) -> Result<(), HandleError> {
        let kind = env.kind();
        let to = AgencyNode::from_ref(env.sender.as_ref()).map_err(malformed)?;
        let header = Header {
            case_id: Uuid::parse_str(&env.case_id).map_err(malformed)?,
            case_code: env.case_code.clone(),
            channel: env.channel(),
            sender: AgencyNode::new(AgencyKind::Bus, owner.code()).map_err(malformed)?,
            recipient: to,
            causation_id: Uuid::parse_str(&env.message_id).ok(),
        };
        let now = Utc::now();
        let mut evidence = envelope::build(
            &header,
            Payload::DeliveryEvidence(DeliveryEvidence {
                evidence_type: EvidenceType::Delivered as i32,
                message_id: env.message_id.clone(),
                message_kind: kind as i32,
                delivered_to: Some(AgencyRef::from(owner)),
                consumer: format!("{owner}"),
                delivered_at: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 0 }),
                ..Default::default()
            }),
        );
        if let Some(why) = self.unknown_recipient(&evidence) {
            // The sender is not in this service's directory (yet: a reload may be due).
            return Err(HandleError::Early(format!("cannot give delivery evidence: {why}")));
        }
        outbox::stage(conn, &self.topology, &mut evidence).await.map_err(|e| HandleError::Transient(e.into()))?;
        Ok(())
    }
}

impl Handler for Agency {
    async fn handle(&self, conn: &mut PgConnection, msg: &Inbound) -> Result<(), HandleError> {
        let env = &msg.envelope;
        let owner = AgencyNode::from_ref(env.recipient.as_ref())
            .ok()
            .filter(|n| self.serves(n))
            // Not (yet) in this service's directory: held while a reload may bring it.
            .ok_or_else(|| HandleError::Early(format!("this service does not serve {}", ref_str(env.recipient.as_ref()))))?;
        env.check_sender_kind().map_err(malformed)?;
        let sender = AgencyNode::from_ref(env.sender.as_ref()).map_err(malformed)?;
        let case_id = Uuid::parse_str(&env.case_id).map_err(malformed)?;
        let payload = env.payload.as_ref().ok_or_else(|| HandleError::Rejected("no payload".into()))?;
        // Parties' data travels sealed; a sender that puts it in clear on the bus is refused, so
        // no copy here holds what an erasure could not reach.
        if self.seals_parties()
            && duijie_common::sealing::carried_referral(Some(payload)).is_some_and(duijie_common::sealing::has_clear_party_data)
        {
            return Err(HandleError::Rejected("party identity, contact or address in clear: the sender must seal them".into()));
        }
        if let Payload::Referral(referral) = payload {
            let state = self.take_referral(conn, &owner, &sender, env, referral, msg).await?;
            store::insert_event(conn, &owner, env, Direction::In, state).await.map_err(db)?;
            return self.evidence(conn, &owner, env).await;
        }
        if let Payload::ConfirmationRequest(request) = payload
            && owner.kind() == AgencyKind::Court
            && self.open_application(conn, &owner, &sender, env, request).await?
        {
            return self.evidence(conn, &owner, env).await;
        }
        let stored = store::locked_case(conn, &owner, case_id)
            .await
            .map_err(|e| match e.downcast_ref::<sqlx::Error>() {
                Some(_) => db(e),
                // The stored row itself is unreadable (a state or agency this build does not know):
                // retrying cannot help, so the message goes to the dead letters with the reason.
                None => HandleError::Rejected(format!("{e:#}")),
            })?
            // The message that opens the case here may still be on its way (held, then dead-lettered).
            .ok_or_else(|| HandleError::Early(format!("unknown case {case_id}")))?;
        // A referrer's message passed on by a body that had handed the case on: only the body
        // that handed the case to this one passes messages on to it.
        if env.passed_on.is_some() {
            let handed_by = Referral::decode(stored.referral.as_slice())
                .ok()
                .and_then(|r| r.forwarded)
                .and_then(|f| AgencyNode::from_ref(f.forwarded_by.as_ref()).ok());
            let signer = msg.signer.as_deref();
            if handed_by.as_ref().map(AgencyNode::to_string).as_deref() != signer || signer.is_none() {
                return Err(HandleError::Rejected(format!(
                    "passed on by {}, which did not hand case {case_id} to {owner}",
                    signer.unwrap_or("an unverified sender")
                )));
            }
        }
        // Delivery evidence is signed by the bus; it speaks for the agency it names as
        // `delivered_to` (agency codes are unique per kind only). Evidence naming no agency
        // speaks for nobody: recorded, with no effect.
        let speaker = match payload {
            Payload::DeliveryEvidence(ev) => match AgencyNode::from_ref(ev.delivered_to.as_ref()) {
                Ok(node) => node,
                Err(_) => {
                    let current = stored.case.lifecycle.state;
                    return store::insert_event(conn, &owner, env, Direction::In, current).await.map_err(db);
                }
            },
            _ => sender,
        };
        let current = stored.case.lifecycle.state;
        if matches!(payload, Payload::DispositionNotice(_)) && store::disposition_told(conn, &owner, case_id).await.map_err(db)? {
            return Err(HandleError::Rejected(format!("refused: case is {current}; its disposition was told already (a referrer tells it once)")));
        }
        match stored.case.decide(Message::Incoming { owner: &owner, sender: &speaker, payload }).map_err(rejected)? {
            Effects::Record => {
                store::insert_event(conn, &owner, env, Direction::In, current).await.map_err(db)?;
                Ok(())
            }
            Effects::PassOn { to } => {
                // A new message that names the original as its cause.
                let mut passed = env.clone();
                passed.message_id = Uuid::now_v7().to_string();
                passed.causation_id.clone_from(&env.message_id);
                passed.recipient = Some(AgencyRef::from(&to));
                // The holder must be able to check that the referrer said it: the original goes
                // along as its sender signed it, and this body signs the passed-on envelope.
                passed.passed_on = Some(PassedOn {
                    original: msg.bytes.clone(),
                    signature: msg.signature.as_ref().map(|s| s.signature.clone()).unwrap_or_default(),
                    signer_cert: msg.signature.as_ref().map(|s| s.cert.clone()).unwrap_or_default(),
                });
                if let Some(why) = self.unknown_recipient(&passed) {
                    return Err(HandleError::Early(format!("cannot pass the message on: {why}")));
                }
                store::insert_event(conn, &owner, env, Direction::In, current).await.map_err(db)?;
                outbox::stage(conn, &self.topology, &mut passed).await.map_err(|e| HandleError::Transient(e.into()))?;
                tracing::info!(case = %case_id, kind = %env.kind(), %to, "passed a referrer's message on to the current holder");
                // This body did take it: the referrer gets its evidence, then the holder's.
                self.evidence(conn, &owner, env).await
            }
            Effects::Apply { lifecycle, new_holder, court, evidence } => {
                let revised = match payload {
                    Payload::Amendment(a) => a.revised.as_ref().map(|r| rules::amended(&stored.referral, r)).transpose().map_err(malformed)?,
                    _ => None,
                };
                store::update(conn, &owner, case_id, &lifecycle, new_holder.as_ref(), court.as_ref(), revised.as_ref()).await.map_err(db)?;
                store::insert_event(conn, &owner, env, Direction::In, lifecycle.state).await.map_err(db)?;
                if evidence { self.evidence(conn, &owner, env).await } else { Ok(()) }
            }
            Effects::Send { .. } => Err(HandleError::Rejected(format!("{} arrived as a message to send", env.kind()))),
        }
    }

    async fn prepare(&self, conn: &mut PgConnection, msgs: &[&Inbound]) -> Result<(), HandleError> {
        // The batch's cases, locked before the inbox row gives the transaction its id (the live
        // feed's order within a case: store::lock_cases).
        let keys: Vec<i64> = msgs.iter().filter_map(|m| Uuid::parse_str(&m.envelope.case_id).ok()).map(store::case_lock_key).collect();
        store::lock_cases(conn, &keys).await.map_err(db)
    }

    fn committed(&self, _msg: &Inbound) {
        self.wake(); // the delivery evidence staged with it can go out at once
    }
}
