//! Tables, template previews and the progress line.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn suppressed_total(counters: &Value) -> i64 {
    counters["suppressed"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_i64).sum())
        .unwrap_or(0)
}

pub fn campaign_list(list: &Value) -> String {
    let mut t = table(&[
        "id",
        "name",
        "channel",
        "segment",
        "state",
        "planned",
        "sent to renderer",
        "suppressed",
        "start",
    ]);
    for c in list.as_array().into_iter().flatten() {
        t.add_row(vec![
            text(&c["id"]),
            text(&c["name"]),
            text(&c["channel"]),
            text(&c["segment"]),
            text(&c["state"]),
            text(&c["counters"]["planned"]),
            text(&c["counters"]["dispatched"]),
            suppressed_total(&c["counters"]).to_string(),
            text(&c["startAt"]),
        ]);
    }
    t.to_string()
}

pub fn campaign(c: &Value) -> String {
    let mut t = table(&["", ""]);
    for (label, key) in [
        ("id", "id"),
        ("name", "name"),
        ("state", "state"),
        ("channel", "channel"),
        ("segment", "segment"),
        ("template", "template"),
        ("start", "startAt"),
        ("time zone", "timeZone"),
        ("requested by", "requestedBy"),
    ] {
        t.add_row(vec![label.to_owned(), text(&c[key])]);
    }
    let counters = &c["counters"];
    for (label, key) in [
        ("planned", "planned"),
        ("sent to renderer", "dispatched"),
        ("expired", "expired"),
        ("dropped", "dropped"),
    ] {
        t.add_row(vec![label.to_owned(), text(&counters[key])]);
    }
    if let Some(reasons) = counters["suppressed"].as_object() {
        for (reason, n) in reasons {
            t.add_row(vec![format!("suppressed: {reason}"), text(n)]);
        }
    }
    let outcomes = &counters["outcomes"];
    let rates = &counters["rates"];
    for (label, key, rate) in [
        ("sent", "sent", None),
        ("delivered", "delivered", Some("delivery")),
        ("bounced (hard)", "bounced", Some("bounce")),
        ("bounced (soft)", "softBounced", None),
        ("failed", "failed", None),
        ("expired", "expired", None),
        ("unique opens", "uniqueOpens", Some("open")),
        ("unique clicks", "uniqueClicks", Some("click")),
        ("machine opens / clicks", "machineOpens", None),
        ("unsubscribed", "unsubscribed", Some("unsubscribe")),
        ("complained", "complained", Some("complaint")),
    ] {
        let value = if key == "machineOpens" {
            format!(
                "{} / {}",
                text(&outcomes["machineOpens"]),
                text(&outcomes["machineClicks"])
            )
        } else {
            match rate.and_then(|r| rates[r].as_f64()) {
                Some(r) => format!("{} ({:.2} %)", text(&outcomes[key]), r * 100.0),
                None => text(&outcomes[key]),
            }
        };
        t.add_row(vec![label.to_owned(), value]);
    }
    t.to_string()
}

pub fn dry_run(d: &Value) -> String {
    let mut t = table(&["", ""]);
    t.add_row(vec!["audience".to_owned(), text(&d["audience"])]);
    t.add_row(vec!["would receive".to_owned(), text(&d["eligible"])]);
    t.add_row(vec![
        "of whom wait for quiet hours".to_owned(),
        text(&d["waitingForQuietHours"]),
    ]);
    if let Some(reasons) = d["suppressed"].as_object() {
        for (reason, n) in reasons {
            t.add_row(vec![format!("suppressed: {reason}"), text(n)]);
        }
    }
    t.to_string()
}

pub fn segment_list(list: &Value) -> String {
    let mut t = table(&["segment", "members"]);
    for s in list.as_array().into_iter().flatten() {
        t.add_row(vec![text(&s["id"]), text(&s["size"])]);
    }
    t.to_string()
}

pub fn segment(s: &Value) -> String {
    let mut t = table(&["contact", "e-mail", "phone", "locale", "time zone"]);
    for m in s["sample"].as_array().into_iter().flatten() {
        t.add_row(vec![
            text(&m["contactId"]),
            text(&m["email"]),
            text(&m["phone"]),
            text(&m["locale"]),
            text(&m["timeZone"]),
        ]);
    }
    format!("{}: {} members\n{t}", text(&s["id"]), text(&s["size"]))
}

/// A progress bar on the terminal (hidden with `--json`, whose lines are the output).
pub fn progress_bar(json: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:>12} [{bar:40}] {pos}/{len} sent to renderer")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

pub fn update_progress(bar: &ProgressBar, c: &Value) {
    let counters = &c["counters"];
    let planned = counters["planned"].as_u64().unwrap_or(0);
    let done = ["dispatched", "expired", "dropped"]
        .iter()
        .filter_map(|k| counters[*k].as_u64())
        .sum::<u64>();
    bar.set_length(planned.max(1));
    bar.set_position(done.min(planned));
    bar.set_message(text(&c["state"]));
    bar.tick();
}

pub fn template_list(list: &Value) -> String {
    let mut t = table(&["template", "channel", "latest version"]);
    for x in list.as_array().into_iter().flatten() {
        t.add_row(vec![
            text(&x["id"]),
            text(&x["channel"]),
            text(&x["latestVersion"]),
        ]);
    }
    t.to_string()
}

pub fn template(x: &Value) -> String {
    let mut out = format!("{} version {}\n", text(&x["id"]), text(&x["version"]));
    for w in x["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("warning: {}\n", text(w)));
    }
    out.push_str(&serde_json::to_string_pretty(&x["template"]["variants"]).unwrap_or_default());
    out
}

/// A preview as a person reads a message: the envelope, then the text part of an e-mail
/// (`--html` prints the HTML instead), or an SMS with what it costs.
pub fn preview(p: &Value) -> String {
    let mut out = format!(
        "{} version {}, {} for contact {}\n",
        text(&p["templateId"]),
        text(&p["version"]),
        text(&p["channel"]),
        text(&p["contactId"]),
    );
    let email = &p["email"];
    let sms = &p["sms"];
    if email.is_object() {
        out.push_str(&format!(
            "From: {}\nTo: {}\n",
            text(&email["from"]),
            text(&email["to"])
        ));
        if let Some(reply_to) = email["replyTo"].as_str() {
            out.push_str(&format!("Reply-To: {reply_to}\n"));
        }
        out.push_str(&format!(
            "Subject: {}\n\n{}",
            text(&email["subject"]),
            text(&email["text"])
        ));
    } else if sms.is_object() {
        let parts = sms["parts"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "From: {}\nTo: {}\n{}, {parts} part{}\n\n{}",
            text(&sms["from"]),
            text(&sms["to"]),
            text(&sms["encoding"]),
            if parts == 1 { "" } else { "s" },
            text(&sms["body"]),
        ));
    }
    out.trim_end().to_owned()
}

pub fn test_send(t: &Value) -> String {
    format!(
        "test {} queued: campaign {}, idempotency key {}",
        text(&t["channel"]),
        text(&t["campaignId"]),
        text(&t["idempotencyKey"]),
    )
}

pub fn sequence_list(list: &Value) -> String {
    let mut t = table(&[
        "id",
        "name",
        "trigger",
        "version",
        "steps",
        "enrolled",
        "running",
        "completed",
        "exited",
        "state",
    ]);
    for q in list.as_array().into_iter().flatten() {
        let f = &q["funnel"];
        let running: i64 = f["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["waiting"].as_i64())
            .sum();
        let exited: i64 = f["exited"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_i64).sum())
            .unwrap_or(0);
        t.add_row(vec![
            text(&q["id"]),
            text(&q["name"]),
            text(&q["trigger"]),
            text(&q["version"]),
            q["steps"].as_array().map_or(0, Vec::len).to_string(),
            text(&f["enrolled"]),
            running.to_string(),
            text(&f["completed"]),
            exited.to_string(),
            if q["retired"].is_null() {
                "active"
            } else {
                "retired"
            }
            .to_owned(),
        ]);
    }
    t.to_string()
}

/// A sequence's steps and funnel: enrolled, at each step, completed, exited by reason.
pub fn sequence(q: &Value) -> String {
    let f = &q["funnel"];
    let mut head = format!(
        "{} — {} (version {}, trigger {}){}\n",
        text(&q["id"]),
        text(&q["name"]),
        text(&q["version"]),
        text(&q["trigger"]),
        if q["retired"].is_null() {
            String::new()
        } else {
            format!(", retired: {}", text(&q["retired"]))
        }
    );
    let mut t = table(&[
        "step",
        "name",
        "channel",
        "template",
        "waiting",
        "sent",
        "skipped",
        "suppressed",
        "expired",
        "delivered",
        "opened",
        "clicked",
    ]);
    let steps = q["steps"].as_array().cloned().unwrap_or_default();
    for s in f["steps"].as_array().into_iter().flatten() {
        let number = s["step"].as_u64().unwrap_or(0) as usize;
        let def = steps.get(number.wrapping_sub(1));
        let field = |k: &str| def.map(|d| text(&d[k])).unwrap_or_else(|| "-".to_owned());
        t.add_row(vec![
            number.to_string(),
            field("name"),
            field("channel"),
            def.map(|d| format!("{} v{}", text(&d["template"]), text(&d["templateVersion"])))
                .unwrap_or_else(|| "-".to_owned()),
            text(&s["waiting"]),
            text(&s["sent"]),
            text(&s["skipped"]),
            text(&s["suppressed"]),
            text(&s["expired"]),
            text(&s["delivered"]),
            text(&s["opened"]),
            text(&s["clicked"]),
        ]);
    }
    let exited = f["exited"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {}", text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".to_owned());
    head.push_str(&format!(
        "enrolled {}, completed {}, exited: {exited}, re-entries refused {}\n",
        text(&f["enrolled"]),
        text(&f["completed"]),
        text(&f["reentryRefused"]),
    ));
    head.push_str(&t.to_string());
    head
}
