//! `tocsin.campaigns`: the control API's commands. Applying one twice changes nothing.

use redis::aio::ConnectionManager;
use tocsin_bus::{HandleError, Handler, Inbound};
use tocsin_contracts::v1;
use tocsin_contracts::v1::campaign_command::Command;

use crate::campaign;

pub struct CommandsHandler {
    pub redis: ConnectionManager,
}

impl Handler for CommandsHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandleError> {
        let command: v1::CampaignCommand = message.decode()?;
        let mut conn = self.redis.clone();
        let id = command.campaign_id.as_str();
        let result = match &command.command {
            Some(Command::Schedule(blast)) => {
                let now = chrono::Utc::now().timestamp_millis();
                campaign::create(&mut conn, id, blast, &command.requested_by, now)
                    .await
                    .map(|_| ())
            }
            Some(Command::Pause(_)) => apply(&mut conn, id, campaign::Command::Pause).await,
            Some(Command::Resume(_)) => apply(&mut conn, id, campaign::Command::Resume).await,
            Some(Command::Cancel(_)) => apply(&mut conn, id, campaign::Command::Cancel).await,
            None => Ok(()),
        };
        result.map_err(HandleError::transient)
    }
}

async fn apply(
    conn: &mut ConnectionManager,
    id: &str,
    command: campaign::Command,
) -> redis::RedisResult<()> {
    match campaign::apply(conn, id, command).await? {
        campaign::Transition::Done(state) => {
            tracing::info!(
                campaign = id,
                ?command,
                state = state.as_str(),
                "campaign command applied"
            );
        }
        campaign::Transition::Refused(state) => {
            tracing::warn!(
                campaign = id,
                ?command,
                state = state.as_str(),
                "campaign command refused in this state"
            );
        }
        campaign::Transition::NotFound => {
            tracing::warn!(campaign = id, ?command, "command for an unknown campaign");
        }
    }
    Ok(())
}

impl std::fmt::Debug for CommandsHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandsHandler")
    }
}
