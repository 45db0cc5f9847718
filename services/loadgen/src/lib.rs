//! `tocsin-loadgen`: synthetic traffic on Tocsin's topics, for the local demo
//! (`deploy/local/demo.sh`) and load tests. Data is realistic and deterministic per seed;
//! the generator streams, so a run of millions holds only what the broker has not yet
//! acknowledged.
//!
//! ```sh
//! tocsin-loadgen contacts --segment benevoles --count 2000000 --seed 7
//! ```
//!
//! # Layout
//! - [`Cli`]: the commands and their flags (clap); [`run`] carries one out.
//! - [`config`]: the shared `[kafka]` section (brokers, topic names), read through the same
//!   layers as every service.
//! - [`data`]: the tables: French first and last names, communes with postcode and time
//!   zone, consent sources, reserved e-mail domains.
//! - [`contacts`]: the generator: contact `i` of seed `S`, computed from `(S, i)` alone;
//!   what was generated, counted as the planner will count it ([`Tally`]).
//! - [`publish`]: contacts streamed into `tocsin.segments` as `SegmentEvent`s, with bounded
//!   in-flight produces, and the throughput.
//! - [`probe`]: the triggered lane's latency: contacts entering a sequence's trigger one
//!   at a time, each timed until a provider accepted its first message.
//! - [`follow`]: one blast followed through the bus to its last provider hand-off:
//!   per-stage throughput, planning-to-hand-off latency, duplicates, losses, lag.
//! - [`ceiling`]: the broker's own throughput for the same hops and record sizes, with no
//!   processing: the ceiling the pipeline's throughput is compared with.
//! - `tests/publish.rs`: on the local stack's broker, every contact arrives once, keyed by
//!   its id, exactly as generated.

pub mod ceiling;
pub mod config;
pub mod contacts;
pub mod data;
pub mod follow;
pub mod probe;
pub mod publish;

use std::io::Write;

use clap::{Args, Parser, Subcommand};
use tocsin_bus::{BusError, BusMetrics, Producer};

pub use crate::config::Config;
pub use crate::contacts::{Generator, Options, OptionsError, Tally};
pub use crate::publish::{Plan, Report};

#[derive(Debug, Parser)]
#[command(
    name = "tocsin-loadgen",
    version,
    about = "Publish synthetic, deterministic traffic to Tocsin's topics"
)]
pub struct Cli {
    /// Print the final report as one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish N French contacts entering a segment (`SegmentEvent` "entered" on
    /// `tocsin.segments`), as the CRM does.
    Contacts(ContactsArgs),
    /// Time the triggered lane: COUNT contacts enter a sequence's trigger segment, one
    /// every INTERVAL, each timed from its segment event to the provider's acceptance of
    /// the sequence's first step (`Feedback(sent)`). Prints p50, p90, p99 and max.
    Probe(ProbeArgs),
    /// Publish one record exactly as given: the payload is read from standard input. For
    /// checking what a consumer does with a record it cannot read (it goes to the
    /// dead-letter topic with the reason) and for replaying a record by hand.
    Raw(RawArgs),
    /// Follow one blast through the bus until every expected recipient's message has
    /// ended (sent, or failed...): start it before scheduling the blast, it writes
    /// READY_FILE once it listens. Prints the blast's measurements.
    Follow(FollowArgs),
    /// The broker's ceiling: COUNT records through the same three hops as the pipeline,
    /// of the given sizes, with no processing. Prints records per second.
    Ceiling(CeilingArgs),
}

#[derive(Debug, Args)]
pub struct FollowArgs {
    #[arg(long)]
    pub campaign: String,
    /// Recipients whose message must end (sent or not) before the report.
    #[arg(long)]
    pub expected: u64,
    /// Stage topics in order; the first one's records mark the planning time.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tocsin.jobs,tocsin.outbound.email"
    )]
    pub stages: Vec<String>,
    /// Give up when no message ended for this long.
    #[arg(long, default_value_t = 120)]
    pub stall_s: u64,
    /// A service's `/metrics` URL, scraped every second for consumer lag; repeatable.
    #[arg(long)]
    pub metrics: Vec<String>,
    /// Written (empty) once the follower is assigned to the end of every topic.
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct CeilingArgs {
    #[arg(long)]
    pub count: u64,
    /// Payload bytes of each hop, in order, e.g. `700,2400,350`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sizes: Vec<usize>,
    /// Partitions of each hop's topic; the jobs topic's by default.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Produces awaiting acknowledgement, per stage.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct RawArgs {
    /// The topic's full name, e.g. `tocsin.segments`.
    #[arg(long)]
    pub topic: String,
    /// The record's key.
    #[arg(long)]
    pub key: String,
    /// The `content-type` header (`application/x-protobuf` or `application/json`).
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// The `event-id` header; a fresh UUID otherwise.
    #[arg(long)]
    pub event_id: Option<String>,
    /// Bootstrap servers; `[kafka] brokers` otherwise.
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The sequence's trigger segment.
    #[arg(long)]
    pub segment: String,
    /// The sequence whose first step is timed.
    #[arg(long)]
    pub sequence: String,
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Milliseconds between two entries.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Seconds to wait for the last answers after the last entry.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// Bootstrap servers; `[kafka] brokers` otherwise.
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct ContactsArgs {
    /// The segment the contacts enter.
    #[arg(long)]
    pub segment: String,
    /// How many contacts.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_CONTACTS))]
    pub count: u64,
    /// The same seed gives the same people (names, communes, addresses, consents).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Contact ids are `<PREFIX>-<index>`; the segment id by default. Two runs with one
    /// prefix publish new snapshots of the same contacts.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Sub-address added to every e-mail address (`…+TAG@example.org`), so that a run can
    /// count its own messages in a mailbox.
    #[arg(long)]
    pub email_tag: Option<String>,
    /// Bootstrap servers; `[kafka] brokers` (TOCSIN__KAFKA__BROKERS) otherwise.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Produces awaiting the broker's acknowledgement, at most.
    #[arg(long, default_value_t = 5000)]
    pub in_flight: usize,
    /// Share of the contacts (0 to 1) who unsubscribed before this run, half from e-mail,
    /// half from SMS: their addresses go to `tocsin.feedback` as `Feedback(unsubscribed)`,
    /// so the planner suppresses them.
    #[arg(long, default_value_t = 0.0)]
    pub opted_out: f64,
}

/// Phone numbers are unique below this many contacts.
pub const MAX_CONTACTS: u64 = 200_000_000;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Options(#[from] OptionsError),
    #[error("loading configuration: {0}")]
    Config(#[from] tocsin_runtime::ConfigError),
    #[error("the bus: {0}")]
    Bus(#[from] BusError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
    #[error("writing the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("probe: {0}")]
    Probe(String),
}

/// Runs one command; progress and the report go to `out`.
pub async fn run(cli: Cli, out: &mut impl Write) -> Result<(), LoadgenError> {
    match cli.command {
        Command::Contacts(args) => publish_contacts(args, cli.json, out).await,
        Command::Probe(args) => probe_lane(args, cli.json, out).await,
        Command::Follow(args) => follow_blast(args, cli.json, out).await,
        Command::Ceiling(args) => measure_ceiling(args, cli.json, out).await,
        Command::Raw(args) => {
            let mut payload = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut payload)?;
            publish_raw(args, &payload, cli.json, out).await
        }
    }
}

async fn follow_blast(
    args: FollowArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), LoadgenError> {
    let config = Config::load(args.brokers.as_deref())?;
    let follower = follow::Follower::assign(follow::Follow {
        brokers: config.kafka.brokers.clone(),
        stages: args.stages,
        feedback_topic: config.kafka.topics.feedback.name.clone(),
        campaign: args.campaign,
        expected: args.expected,
        stall: std::time::Duration::from_secs(args.stall_s),
        metrics: args.metrics,
    })
    .map_err(LoadgenError::Probe)?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"")?;
    }
    let report = follower
        .run(|done, expected| eprintln!("{done} / {expected} ended"))
        .await
        .map_err(LoadgenError::Probe)?;
    emit(out, json, &report, || {
        format!(
            "{} sent, {} not sent, {} missing, {} sent twice; {:.0} sent/s; planning to hand-off p50 {:.0} ms, p99 {:.0} ms",
            report.sent,
            report.not_sent,
            report.missing,
            report.sent_twice,
            report.sent_per_second,
            report.latency_p50_ms,
            report.latency_p99_ms
        )
    })?;
    Ok(())
}

async fn measure_ceiling(
    args: CeilingArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), LoadgenError> {
    let config = Config::load(args.brokers.as_deref())?;
    let report = ceiling::run(&ceiling::Ceiling {
        partitions: args
            .partitions
            .unwrap_or(config.kafka.topics.jobs.partitions),
        kafka: config.kafka,
        count: args.count,
        sizes: args.sizes,
        in_flight: args.in_flight,
        run: run_id(),
    })
    .await
    .map_err(LoadgenError::Probe)?;
    emit(out, json, &report, || {
        format!(
            "{} records through {} hops ({:?} bytes) in {:.2} s: {:.0} records/s",
            report.count,
            report.sizes.len(),
            report.sizes,
            report.seconds,
            report.per_second
        )
    })?;
    Ok(())
}

/// Writes `report` as one JSON line, or as the text `text` makes.
fn emit<T: serde::Serialize>(
    out: &mut impl Write,
    json: bool,
    report: &T,
    text: impl FnOnce() -> String,
) -> Result<(), LoadgenError> {
    if json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
    } else {
        writeln!(out, "{}", text())?;
    }
    Ok(())
}

/// Names one run's contacts, groups and topics: the time in milliseconds, in hex.
fn run_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms:x}")
}

/// Publishes `payload` as one record of `args.topic`, and reports where it landed.
pub async fn publish_raw(
    args: RawArgs,
    payload: &[u8],
    json: bool,
    out: &mut impl Write,
) -> Result<(), LoadgenError> {
    let config = Config::load(args.brokers.as_deref())?;
    let metrics = BusMetrics::register(&prometheus::Registry::new())?;
    let producer = Producer::new(&config.kafka, "tocsin-loadgen-raw", metrics)?;
    let event_id = args
        .event_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let delivery = producer
        .send(tocsin_bus::Outbound {
            topic: &args.topic,
            key: args.key.as_bytes(),
            payload,
            content_type: &args.content_type,
            event_id: &event_id,
            trace: &tocsin_bus::TraceContext::new_root(),
        })
        .await?;
    if json {
        let report = serde_json::json!({
            "topic": args.topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "event_id": event_id,
        });
        writeln!(out, "{report}")?;
    } else {
        writeln!(
            out,
            "published {} bytes to {} partition {} offset {} (event-id {event_id})",
            payload.len(),
            args.topic,
            delivery.partition,
            delivery.offset
        )?;
    }
    Ok(())
}

async fn probe_lane(args: ProbeArgs, json: bool, out: &mut impl Write) -> Result<(), LoadgenError> {
    let config = Config::load(args.brokers.as_deref())?;
    let topics = &config.kafka.topics;
    tocsin_bus::admin::ensure_topics(&config.kafka, &[&topics.segments, &topics.feedback]).await?;
    let metrics = BusMetrics::register(&prometheus::Registry::new())?;
    let producer = Producer::new(&config.kafka, "tocsin-loadgen-probe", metrics)?;
    let run = run_id();
    let report = probe::run(
        &producer,
        &probe::Probe {
            segments_topic: topics.segments.name.clone(),
            feedback_topic: topics.feedback.name.clone(),
            brokers: config.kafka.brokers.clone(),
            segment: args.segment,
            sequence: args.sequence,
            count: args.count,
            interval: std::time::Duration::from_millis(args.interval_ms.max(1)),
            timeout: std::time::Duration::from_secs(args.timeout_s),
            run,
        },
    )
    .await
    .map_err(LoadgenError::Probe)?;
    emit(out, json, &report, || {
        format!(
            "{} of {} answered: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            report.received,
            report.probes,
            report.p50_ms,
            report.p90_ms,
            report.p99_ms,
            report.max_ms
        )
    })?;
    if report.received < report.probes {
        return Err(LoadgenError::Probe(format!(
            "{} probes never reached a provider",
            report.probes - report.received
        )));
    }
    Ok(())
}

async fn publish_contacts(
    args: ContactsArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), LoadgenError> {
    if !contacts::is_identifier(&args.segment) {
        return Err(OptionsError::Segment(args.segment).into());
    }
    let generator = Generator::new(Options {
        seed: args.seed,
        id_prefix: args.id_prefix.unwrap_or_else(|| args.segment.clone()),
        email_tag: args.email_tag,
    })?;
    if !(0.0..=1.0).contains(&args.opted_out) {
        return Err(OptionsError::OptedOut(args.opted_out).into());
    }
    let config = Config::load(args.brokers.as_deref())?;
    let topic = config.kafka.topics.segments.clone();
    let feedback = config.kafka.topics.feedback.clone();
    // Tansu creates no topic on first use: make them if no service has yet.
    tocsin_bus::admin::ensure_topics(&config.kafka, &[&topic, &feedback]).await?;
    let metrics = BusMetrics::register(&prometheus::Registry::new())?;
    let producer = Producer::new(&config.kafka, "tocsin-loadgen", metrics)?;
    let plan = Plan {
        topic: topic.name,
        segment: args.segment,
        count: args.count,
        in_flight: args.in_flight,
        opted_out_share: args.opted_out,
        feedback_topic: feedback.name,
    };
    let report = publish::contacts(&producer, &generator, &plan, |p| {
        if json {
            return;
        }
        let rate = p.published as f64 / p.elapsed.as_secs_f64().max(f64::EPSILON);
        // A progress line that cannot be written is not worth stopping a run for; the
        // report's own write below still fails loudly.
        let _ = writeln!(
            out,
            "  {} / {} contacts, {rate:.0} events/s",
            p.published, p.count
        );
    })
    .await?;
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
        return Ok(());
    }
    let t = report.tally;
    writeln!(
        out,
        "published {} contacts into segment {} on {} in {:.2} s: {:.0} events/s",
        report.published, plan.segment, plan.topic, report.seconds, report.events_per_second
    )?;
    writeln!(
        out,
        "  e-mail consent {}, SMS consent {}, withdrawn {}, overseas {}, opted out (with consent) e-mail {}, SMS {}",
        t.email_consent, t.sms_consent, t.withdrawn, t.overseas, t.email_opted_out, t.sms_opted_out
    )?;
    Ok(())
}
