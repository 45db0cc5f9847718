//! `tocsin.segments`: keeps each contact's latest profile and each segment's members.
//!
//! Replaying the topic gives the same state: events of one contact arrive in order (they
//! share a partition), applying one twice changes nothing, and an older snapshot never
//! replaces a newer one.

use std::sync::Arc;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tocsin_bus::{HandleError, Handler, Inbound};
use tocsin_contracts::domain::{EmailAddress, PhoneNumber};
use tocsin_contracts::v1;
use tocsin_contracts::v1::segment_event::Change;

use crate::clock::Clock;
use crate::engine::PlanError;
use crate::keys;
use crate::metrics::PlannerMetrics;
use crate::sequence::Sequences;
use crate::store::{self, AddressHasher, Membership};

/// The suppression reason recorded for an erased person.
pub const ERASED: &str = "erased";

pub struct SegmentsHandler {
    pub redis: ConnectionManager,
    pub hasher: AddressHasher,
    pub metrics: PlannerMetrics,
    pub sequences: Arc<Sequences>,
    pub clock: Clock,
}

impl Handler for SegmentsHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandleError> {
        let event: v1::SegmentEvent = message.decode()?;
        let mut conn = self.redis.clone();
        let result = match &event.change {
            Some(Change::Entered(entered)) => {
                self.entered(&mut conn, &event.contact_id, entered).await
            }
            Some(Change::Left(left)) => self.left(&mut conn, &event.contact_id, left).await,
            Some(Change::Erased(erased)) => self.erased(&mut conn, &event.contact_id, erased).await,
            // Validation refuses events without a change.
            None => Ok(()),
        };
        result.map_err(HandleError::transient)
    }
}

impl SegmentsHandler {
    async fn entered(
        &self,
        conn: &mut ConnectionManager,
        contact_id: &str,
        entered: &v1::SegmentEntered,
    ) -> Result<(), PlanError> {
        let segment = entered.segment_id.as_str();
        let triggers = self.sequences.triggers(segment).await?;
        let fresh = store::apply_membership(
            conn,
            contact_id,
            Membership::Enter(segment),
            entered.contact.as_ref(),
            triggers,
        )
        .await?;
        if !fresh {
            self.metrics.stale_snapshots.inc();
        }
        if triggers || self.sequences.concerns(segment).await? {
            let pending = keys::pending_enrolments(contact_id);
            let marked: Option<i64> = conn.hget(&pending, segment).await?;
            // The event's own snapshot when it carries one (its time zone is all enrolment
            // reads); the stored profile otherwise.
            let stored = match &entered.contact {
                Some(_) => None,
                None => store::load_record(conn, contact_id)
                    .await?
                    .and_then(|r| r.contact),
            };
            self.sequences
                .entered(
                    contact_id,
                    segment,
                    entered.contact.as_ref().or(stored.as_ref()),
                    marked.is_some(),
                    self.clock.now(),
                )
                .await?;
            if marked.is_some() {
                let _: () = conn.hdel(&pending, segment).await?;
            }
        }
        Ok(())
    }

    async fn left(
        &self,
        conn: &mut ConnectionManager,
        contact_id: &str,
        left: &v1::SegmentLeft,
    ) -> Result<(), PlanError> {
        store::apply_membership(
            conn,
            contact_id,
            Membership::Leave(&left.segment_id),
            left.contact.as_ref(),
            false,
        )
        .await?;
        self.sequences
            .left(contact_id, &left.segment_id, self.clock.now())
            .await
    }

    /// GDPR art. 17: the profile, memberships and counters go; only keyed hashes of the
    /// addresses stay, on the suppression list (art. 21).
    async fn erased(
        &self,
        conn: &mut ConnectionManager,
        contact_id: &str,
        erased: &v1::ContactErased,
    ) -> Result<(), PlanError> {
        self.sequences.erased(contact_id, self.clock.now()).await?;
        let mut hashes = Vec::new();
        let record = store::load_record(conn, contact_id)
            .await?
            .unwrap_or_default();
        if let Some(profile) = &record.contact {
            hashes.extend(self.hasher.addresses(profile));
        }
        if let Ok(email) = EmailAddress::parse(&erased.email) {
            hashes.push(self.hasher.email(&email));
        }
        if let Ok(phone) = PhoneNumber::parse(&erased.phone_e164) {
            hashes.push(self.hasher.phone(&phone));
        }
        let segments = record.segments;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for hash in &hashes {
            pipe.hset(keys::SUPPRESSION, hash, ERASED).ignore();
        }
        for segment in &segments {
            pipe.zrem(keys::segment(segment), contact_id).ignore();
        }
        store::delete_record(&mut pipe, contact_id);
        pipe.del(&[
            keys::frequency(contact_id),
            keys::soft_bounces(contact_id),
            keys::pending_enrolments(contact_id),
        ])
        .ignore();
        pipe.query_async::<()>(conn).await?;
        self.metrics.erasures.inc();
        tracing::info!(
            addresses = hashes.len(),
            segments = segments.len(),
            "contact erased"
        );
        Ok(())
    }
}

impl std::fmt::Debug for SegmentsHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentsHandler")
    }
}
