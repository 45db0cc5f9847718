//! `tocsin.campaigns`: the control API's commands. Applying one twice changes nothing.

use std::sync::Arc;

use futures::future::try_join_all;
use redis::aio::ConnectionManager;
use tocsin_bus::{HandleError, Handler, Inbound, TraceContext};
use tocsin_contracts::v1;
use tocsin_contracts::v1::campaign_command::Command;

use crate::campaign::{self, State, Transition};
use crate::dispatch::remove_from_schedule;
use crate::engine::{self, PlanError, Planner};
use crate::keys;
use crate::sequence;

pub struct CommandsHandler {
    pub planner: Arc<Planner>,
}

impl std::fmt::Debug for CommandsHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandsHandler")
    }
}

impl Handler for CommandsHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandleError> {
        let command: v1::CampaignCommand = message.decode()?;
        let mut conn = self.planner.redis.clone();
        let id = command.campaign_id.as_str();
        let result = match &command.command {
            Some(Command::Schedule(blast)) => {
                let now = chrono::Utc::now().timestamp_millis();
                campaign::create(&mut conn, id, blast, &command.requested_by, now)
                    .await
                    .map(|_| ())
                    .map_err(PlanError::from)
            }
            Some(Command::Pause(_)) => self.apply(&mut conn, id, campaign::Command::Pause).await,
            Some(Command::Resume(_)) => self.apply(&mut conn, id, campaign::Command::Resume).await,
            Some(Command::Cancel(_)) => self.apply(&mut conn, id, campaign::Command::Cancel).await,
            Some(Command::DefineSequence(define)) => {
                // The API refuses such definitions, so this one came from elsewhere: to the
                // dead-letter topic with the field at fault, not dropped.
                if let Some(def) = &define.definition
                    && let Err(error) = sequence::definition::check(def)
                {
                    return Err(HandleError::permanent(
                        "invalid",
                        format!("sequence {}: {error}", command.sequence_id),
                    ));
                }
                self.define_sequence(&mut conn, &command.sequence_id, define)
                    .await
            }
            Some(Command::RetireSequence(retire)) => {
                let id = command.sequence_id.as_str();
                match sequence::store::retire(&mut conn, id, &retire.reason).await {
                    Ok(true) => {
                        tracing::info!(sequence = id, "sequence retired");
                        Ok(())
                    }
                    Ok(false) => {
                        tracing::warn!(sequence = id, "retire command for an unknown sequence");
                        Ok(())
                    }
                    Err(e) => Err(PlanError::from(e)),
                }
            }
            None => Ok(()),
        };
        result.map_err(HandleError::transient)
    }
}

impl CommandsHandler {
    /// Writes the version the API assigned (once: the API wrote it already, and a replay
    /// finds it). The definition has passed `definition::check`.
    async fn define_sequence(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        define: &v1::DefineSequence,
    ) -> Result<(), PlanError> {
        let Some(def) = &define.definition else {
            return Ok(());
        };
        let now = chrono::Utc::now().timestamp_millis();
        let outcome = sequence::store::define(
            conn,
            id,
            define.version,
            def,
            define.migrate_enrolments,
            "",
            now,
        )
        .await?;
        tracing::info!(
            sequence = id,
            version = define.version,
            ?outcome,
            "sequence defined"
        );
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        command: campaign::Command,
    ) -> Result<(), PlanError> {
        match campaign::apply(conn, id, command).await? {
            Transition::Done(state) => {
                tracing::info!(
                    campaign = id,
                    ?command,
                    state = state.as_str(),
                    "campaign command applied"
                );
                if state == State::Cancelled {
                    let swept = self.sweep(conn, id).await?;
                    tracing::info!(
                        campaign = id,
                        swept,
                        "cancelled campaign's waiting jobs removed"
                    );
                }
            }
            Transition::Refused(state) => {
                tracing::warn!(
                    campaign = id,
                    ?command,
                    state = state.as_str(),
                    "campaign command refused in this state"
                );
            }
            Transition::NotFound => {
                tracing::warn!(campaign = id, ?command, "command for an unknown campaign");
            }
        }
        Ok(())
    }

    /// Takes a cancelled campaign's jobs out of the schedule now, each with a
    /// `Feedback(cancelled)`, rather than when they come due (hours later for quiet hours).
    async fn sweep(&self, conn: &mut ConnectionManager, id: &str) -> Result<usize, PlanError> {
        let escaped: String = id
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                _ => vec![c],
            })
            .collect();
        let pattern = format!("{escaped}\u{1f}*");
        let trace = TraceContext::new_root();
        let channel = campaign::load(conn, id)
            .await?
            .map(|k| engine::channel_of(&k.blast))
            .unwrap_or_default();
        let mut cursor: u64 = 0;
        let mut swept = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(keys::SCHEDULE)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            let members: Vec<&String> = found.iter().step_by(2).collect();
            let feedback: Vec<v1::Feedback> = members
                .iter()
                .filter_map(|m| keys::split_schedule_member(m))
                .map(|(_, contact)| {
                    self.planner.feedback(
                        id,
                        contact,
                        channel,
                        v1::FeedbackKind::Cancelled,
                        v1::Reason::Unspecified,
                        "campaign cancelled",
                    )
                })
                .collect();
            let topic = &self.planner.topics.feedback.name;
            try_join_all(feedback.iter().map(|f| {
                let event_id = f
                    .meta
                    .as_ref()
                    .map(|m| m.event_id.as_str())
                    .unwrap_or_default();
                self.planner
                    .producer
                    .publish(topic, &f.contact_id, event_id, f, &trace)
            }))
            .await?;
            let mut pipe = redis::pipe();
            for member in &members {
                remove_from_schedule(&mut pipe, id, member, "dropped");
            }
            pipe.query_async::<()>(conn).await?;
            swept += members.len();
            if next == 0 {
                return Ok(swept);
            }
            cursor = next;
        }
    }
}
