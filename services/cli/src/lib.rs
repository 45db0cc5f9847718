//! `tocsin`: every control-API action from a terminal. Tables for people, `--json` for
//! scripts, `campaigns watch` for a live progress bar.
//!
//! # Layout
//! - [`Cli`]: the commands and their options (clap).
//! - [`client`]: HTTP calls to the API and its errors.
//! - [`render`]: tables, template previews and the progress line.

pub mod client;
pub mod render;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::client::{Client, ClientError};

#[derive(Debug, Parser)]
#[command(name = "tocsin", version, about = "Schedule and steer Tocsin blasts")]
pub struct Cli {
    /// The control API.
    #[arg(
        long,
        env = "TOCSIN_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// A bearer token from the API's configuration.
    #[arg(long, env = "TOCSIN_API_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Blasts: schedule, list, show, pause, resume, cancel, dry-run, watch.
    #[command(subcommand)]
    Campaigns(Campaigns),
    /// Segments published by the CRM.
    #[command(subcommand)]
    Segments(Segments),
    /// Message templates: upload a new version, list, show, preview, test-send, delete.
    #[command(subcommand)]
    Templates(Templates),
    /// Automated sequences: define from a file, new versions, funnels, retire.
    #[command(subcommand)]
    Sequences(Sequences),
}

#[derive(Debug, Subcommand)]
pub enum Sequences {
    /// Define a sequence from a TOML or JSON file (the API's fields; see
    /// `config/sequences/welcome.toml`). The file's name is the id unless it gives one.
    Create {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// A new version from a file; running enrolments keep theirs unless --migrate.
    Update {
        id: String,
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long)]
        migrate: bool,
    },
    /// Sequences with their funnels.
    List,
    /// One sequence: steps and funnel (enrolled, at each step, completed, exited by reason).
    Show { id: String },
    /// No new enrolment; running enrolments exit at their next step.
    Retire {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Reads a sequence file, TOML (`.toml`) or JSON, as the API's JSON body.
fn sequence_file(file: &std::path::Path) -> Result<Value, UsageError> {
    let shown = file.display();
    let text =
        std::fs::read_to_string(file).map_err(|e| UsageError(format!("--file {shown}: {e}")))?;
    let mut body: Value = if file.extension().is_some_and(|x| x == "toml") {
        let parsed: toml::Value =
            toml::from_str(&text).map_err(|e| UsageError(format!("--file {shown}: {e}")))?;
        serde_json::to_value(parsed).map_err(|e| UsageError(format!("--file {shown}: {e}")))?
    } else {
        serde_json::from_str(&text)
            .map_err(|e| UsageError(format!("--file {shown}: not JSON: {e}")))?
    };
    if body.get("id").is_none()
        && let Some(stem) = file.file_stem()
    {
        body["id"] = Value::from(stem.to_string_lossy().into_owned());
    }
    Ok(body)
}

#[derive(Debug, Subcommand)]
pub enum Templates {
    /// Upload a template from a JSON file (`{"channel", "defaultLocale", "variants"}`):
    /// refused with the line and column of any error, stored as a new version otherwise.
    Upload {
        id: String,
        #[arg(long)]
        file: std::path::PathBuf,
        /// Refuse variables outside the contact schema.
        #[arg(long)]
        strict: bool,
    },
    List,
    Show {
        id: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Render a template for one contact exactly as the renderer would: an e-mail's
    /// subject and text part, or an SMS with its encoding and number of parts.
    Preview {
        id: String,
        /// A version number; the latest otherwise.
        #[arg(long)]
        version: Option<u32>,
        /// A contact stored by the planner; the built-in sample contact otherwise.
        #[arg(long)]
        contact: Option<String>,
        /// A profile of the renderer's `[renderer.sender_profiles]`; `default` otherwise.
        #[arg(long)]
        sender_profile: Option<String>,
        /// Print only the e-mail's HTML body (to save and open in a browser).
        #[arg(long)]
        html: bool,
    },
    /// Send one message through the real pipeline: rendered for a contact (the sample
    /// contact unless --contact), delivered to --to.
    TestSend {
        id: String,
        /// An e-mail address for an e-mail template, an E.164 number for an SMS template.
        #[arg(long)]
        to: String,
        /// A contact stored by the planner, whose data fills the template.
        #[arg(long)]
        contact: Option<String>,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        sender_profile: Option<String>,
    },
    /// Delete a template: refused while a campaign still to send uses it. Messages already
    /// planned still render; uploading the id again starts a new version.
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Campaigns {
    /// Schedule a blast.
    Create(Box<CampaignArgs>),
    /// Audience size and suppression breakdown, without sending.
    DryRun(Box<CampaignArgs>),
    /// Campaigns, newest first.
    List,
    /// One campaign with its counters.
    Show {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// No message of the campaign leaves once this returns.
    Cancel {
        id: String,
    },
    /// A live progress bar until the campaign completes or is cancelled.
    Watch {
        id: String,
        /// Seconds between two looks.
        #[arg(long, default_value_t = 1.0)]
        every: f64,
    },
}

#[derive(Debug, Subcommand)]
pub enum Segments {
    List,
    Show {
        id: String,
        /// Members to show, addresses masked.
        #[arg(long, default_value_t = 10)]
        sample: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Channel {
    Email,
    Sms,
}

#[derive(Debug, Args)]
pub struct CampaignArgs {
    /// Campaign id (generated when absent).
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub segment: String,
    #[arg(long, value_enum)]
    pub channel: Channel,
    #[arg(long)]
    pub template: String,
    #[arg(long, default_value_t = 0)]
    pub template_version: u32,
    /// `now` or RFC 3339 with an offset.
    #[arg(long, default_value = "now")]
    pub start: String,
    /// IANA time zone for recipients who have none.
    #[arg(long)]
    pub time_zone: Option<String>,
    /// `90m`, `6h`, `1d`.
    #[arg(long)]
    pub expiry: Option<String>,
    #[arg(long)]
    pub sender_profile: String,
    #[arg(long)]
    pub max_sms_parts: Option<u32>,
    /// Quiet hours: `default` (the channel's), `none`, or windows such as
    /// `1-5@08:00-20:00,6@09:00-18:00` (ISO weekdays, 1 = Monday).
    #[arg(long, default_value = "default")]
    pub quiet_hours: String,
    /// Also close French public holidays (with explicit windows).
    #[arg(long)]
    pub skip_holidays: bool,
    /// E-mail: add the open pixel (opens counted by the tracker).
    #[arg(long)]
    pub track_opens: bool,
    /// E-mail: send links through the tracker's signed redirects (clicks counted).
    #[arg(long)]
    pub track_clicks: bool,
}

/// A usage mistake the CLI can tell before asking the API.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn quiet_hours(spec: &str, skip_holidays: bool) -> Result<Option<Value>, UsageError> {
    match spec {
        "default" => return Ok(None),
        "none" => return Ok(Some(json!({"disabled": true}))),
        _ => {}
    }
    let mut windows = Vec::new();
    for part in spec.split(',') {
        let bad = || {
            UsageError(format!(
                "--quiet-hours: {part:?} is not like 1-5@08:00-20:00"
            ))
        };
        let (days, hours) = part.split_once('@').ok_or_else(bad)?;
        let (start, end) = hours.split_once('-').ok_or_else(bad)?;
        let days: Vec<u32> = match days.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                (a..=b).collect()
            }
            None => vec![days.parse().map_err(|_| bad())?],
        };
        windows.push(json!({"days": days, "start": start, "end": end}));
    }
    Ok(Some(
        json!({"windows": windows, "skipFrenchPublicHolidays": skip_holidays}),
    ))
}

fn request_body(args: &CampaignArgs) -> Result<Value, UsageError> {
    let mut body = json!({
        "name": args.name,
        "segment": args.segment,
        "channel": match args.channel { Channel::Email => "email", Channel::Sms => "sms" },
        "template": args.template,
        "templateVersion": args.template_version,
        "startAt": args.start,
        "senderProfile": args.sender_profile,
    });
    let fields = [
        ("id", args.id.clone().map(Value::from)),
        ("timeZone", args.time_zone.clone().map(Value::from)),
        ("expiry", args.expiry.clone().map(Value::from)),
        ("maxSmsParts", args.max_sms_parts.map(Value::from)),
        (
            "quietHours",
            quiet_hours(&args.quiet_hours, args.skip_holidays)?,
        ),
        (
            "tracking",
            (args.track_opens || args.track_clicks).then(
                || json!({"openPixel": args.track_opens, "clickRewriting": args.track_clicks}),
            ),
        ),
    ];
    with_present(&mut body, fields);
    Ok(body)
}

/// Sets the fields that have a value, leaving the others out of the request.
fn with_present<const N: usize>(body: &mut Value, fields: [(&str, Option<Value>); N]) {
    for (k, v) in fields {
        if let Some(v) = v {
            body[k] = v;
        }
    }
}

/// Runs one command; what it prints goes to `out`.
pub async fn run(cli: Cli, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let client = Client::new(&cli.api, cli.token.clone());
    let value = match &cli.command {
        Command::Campaigns(Campaigns::Create(args)) => {
            client.post("/v1/campaigns", &request_body(args)?).await?
        }
        Command::Campaigns(Campaigns::DryRun(args)) => {
            client
                .post("/v1/campaigns/dry-run", &request_body(args)?)
                .await?
        }
        Command::Campaigns(Campaigns::List) => client.get("/v1/campaigns").await?,
        Command::Campaigns(Campaigns::Show { id }) => {
            client.get(&format!("/v1/campaigns/{id}")).await?
        }
        Command::Campaigns(Campaigns::Pause { id }) => {
            client
                .post(&format!("/v1/campaigns/{id}/pause"), &json!({}))
                .await?
        }
        Command::Campaigns(Campaigns::Resume { id }) => {
            client
                .post(&format!("/v1/campaigns/{id}/resume"), &json!({}))
                .await?
        }
        Command::Campaigns(Campaigns::Cancel { id }) => {
            client
                .post(&format!("/v1/campaigns/{id}/cancel"), &json!({}))
                .await?
        }
        Command::Campaigns(Campaigns::Watch { id, every }) => {
            return watch(
                &client,
                id,
                Duration::from_secs_f64(every.max(0.1)),
                cli.json,
                out,
            )
            .await;
        }
        Command::Templates(Templates::Upload { id, file, strict }) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| UsageError(format!("--file {}: {e}", file.display())))?;
            let mut body: Value = serde_json::from_str(&text)
                .map_err(|e| UsageError(format!("--file {}: not JSON: {e}", file.display())))?;
            body["strict"] = Value::from(*strict);
            client
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/templates/{id}"),
                    Some(&body),
                )
                .await?
        }
        Command::Templates(Templates::List) => client.get("/v1/templates").await?,
        Command::Templates(Templates::Show { id, version }) => {
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            client.get(&format!("/v1/templates/{id}{query}")).await?
        }
        Command::Templates(Templates::Preview {
            id,
            version,
            contact,
            sender_profile,
            ..
        }) => {
            let mut body = json!({});
            with_present(
                &mut body,
                [
                    ("version", version.map(Value::from)),
                    ("contactId", contact.clone().map(Value::from)),
                    ("senderProfile", sender_profile.clone().map(Value::from)),
                ],
            );
            client
                .post(&format!("/v1/templates/{id}/preview"), &body)
                .await?
        }
        Command::Templates(Templates::TestSend {
            id,
            to,
            contact,
            version,
            sender_profile,
        }) => {
            let mut body = json!({"to": to});
            with_present(
                &mut body,
                [
                    ("version", version.map(Value::from)),
                    ("contactId", contact.clone().map(Value::from)),
                    ("senderProfile", sender_profile.clone().map(Value::from)),
                ],
            );
            client
                .post(&format!("/v1/templates/{id}/test-send"), &body)
                .await?
        }
        Command::Templates(Templates::Delete { id }) => {
            // 204: the API answers with no body.
            client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/templates/{id}"),
                    None,
                )
                .await?;
            json!({"id": id, "deleted": true})
        }
        Command::Sequences(Sequences::Create { file }) => {
            client.post("/v1/sequences", &sequence_file(file)?).await?
        }
        Command::Sequences(Sequences::Update { id, file, migrate }) => {
            let mut body = sequence_file(file)?;
            body["id"] = Value::from(id.as_str());
            body["migrate"] = Value::from(*migrate);
            client
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/sequences/{id}"),
                    Some(&body),
                )
                .await?
        }
        Command::Sequences(Sequences::List) => client.get("/v1/sequences").await?,
        Command::Sequences(Sequences::Show { id }) => {
            client.get(&format!("/v1/sequences/{id}")).await?
        }
        Command::Sequences(Sequences::Retire { id, reason }) => {
            client
                .post(
                    &format!("/v1/sequences/{id}/retire"),
                    &json!({ "reason": reason }),
                )
                .await?
        }
        Command::Segments(Segments::List) => client.get("/v1/segments").await?,
        Command::Segments(Segments::Show { id, sample }) => {
            client
                .get(&format!("/v1/segments/{id}?sample={sample}"))
                .await?
        }
    };
    if cli.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    let text = match &cli.command {
        Command::Campaigns(Campaigns::List) => render::campaign_list(&value),
        Command::Campaigns(Campaigns::DryRun(_)) => render::dry_run(&value),
        Command::Campaigns(_) => render::campaign(&value),
        Command::Sequences(Sequences::List) => render::sequence_list(&value),
        Command::Sequences(_) => render::sequence(&value),
        Command::Segments(Segments::List) => render::segment_list(&value),
        Command::Segments(Segments::Show { .. }) => render::segment(&value),
        Command::Templates(Templates::List) => render::template_list(&value),
        Command::Templates(Templates::Preview { id, html: true, .. }) => value["email"]["html"]
            .as_str()
            .ok_or_else(|| {
                UsageError(format!(
                    "--html: template {id} is an SMS template, it has no HTML"
                ))
            })?
            .to_owned(),
        Command::Templates(Templates::Preview { .. }) => render::preview(&value),
        Command::Templates(Templates::TestSend { .. }) => render::test_send(&value),
        Command::Templates(Templates::Delete { id }) => format!("template {id} deleted"),
        Command::Templates(_) => render::template(&value),
    };
    writeln!(out, "{text}")?;
    Ok(())
}

async fn watch(
    client: &Client,
    id: &str,
    every: Duration,
    json: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let bar = render::progress_bar(json);
    loop {
        let campaign = client.get(&format!("/v1/campaigns/{id}")).await?;
        let state = campaign["state"].as_str().unwrap_or_default().to_owned();
        render::update_progress(&bar, &campaign);
        if json {
            writeln!(out, "{}", serde_json::to_string(&campaign)?)?;
        }
        if state == "completed" || state == "cancelled" {
            bar.finish();
            if !json {
                writeln!(out, "{}", render::campaign(&campaign))?;
            }
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

/// The exit code for an error: 2 for a mistake in the command line or a refused request,
/// 1 for everything else.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Refused { status, .. }) if status.is_client_error() => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn body(extra: &[&str]) -> Value {
        let mut argv = vec![
            "tocsin",
            "campaigns",
            "dry-run",
            "--name",
            "n",
            "--segment",
            "s",
            "--channel",
            "email",
            "--template",
            "t",
            "--sender-profile",
            "default",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).expect("arguments");
        let Command::Campaigns(Campaigns::DryRun(args)) = cli.command else {
            panic!("not a dry run");
        };
        request_body(&args).expect("body")
    }

    #[test]
    fn tracking_is_asked_for_only_with_its_flags() {
        assert!(body(&[]).get("tracking").is_none());
        assert_eq!(
            body(&["--track-opens"])["tracking"],
            json!({"openPixel": true, "clickRewriting": false})
        );
        assert_eq!(
            body(&["--track-opens", "--track-clicks"])["tracking"],
            json!({"openPixel": true, "clickRewriting": true})
        );
    }
}
