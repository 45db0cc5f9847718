//! Machine opens and clicks: requests made by software on the recipient's behalf rather than
//! by the recipient, flagged (`Feedback.machine`) so that statistics can leave them out.
//! They are still published: a machine open still says the message arrived.
//!
//! Who they are, and the rule that recognises each:
//!
//! - **Privacy proxies fetching images ahead of the reader.** Apple Mail Privacy Protection
//!   prefetches every remote image of every message through Apple's proxies with the bare
//!   user agent `Mozilla/5.0` (Apple Mail itself sends a full WebKit user agent); Gmail's
//!   and Yahoo's image proxies say `GoogleImageProxy` / `YahooMailProxy`. Rule: the user
//!   agent (`[tracker] machine_user_agents`, exactly `Mozilla/5.0`, or none at all).
//! - **Link scanners at delivery** (Microsoft Defender / Safe Links, Mimecast, Proofpoint,
//!   Barracuda): they fetch the pixel and every link within seconds of delivery, often
//!   with an ordinary browser's user agent, so the agent alone cannot tell. Rule: **time
//!   since the message was sent**. The token does not carry the send time, but the
//!   sender's ledger does: `t:led:{campaign}:{contact}:{channel}` holds
//!   `sent|provider|id|attempt|MS`, MS being when the provider accepted the message, kept
//!   seven days. The tracker reads it in the same Redis round trip that records the
//!   request (see [`crate::engagement`]), so the rule costs nothing extra and needs no
//!   state of its own. An open or click at most `machine_window_s` (10 s) after MS is a
//!   machine's: a person does not receive, open and read a message that fast.
//! - **Pre-flight and metadata requests**: Office apps request a link (`ms-office`,
//!   `Microsoft Office Existence Discovery`) before handing it to the browser, which then
//!   makes the person's own request; scanners often use `HEAD`. Rule: the user agent, and
//!   `HEAD` is always a machine.
//! - **Provider verdicts**: SendGrid's `sg_machine_open` and Brevo's `proxy_open` events
//!   say it themselves.
//!
//! Rejected alternative: remembering a first-seen time per token and flagging a second
//! request from another address within some milliseconds. It flags the *second* request,
//! which is usually the person following a scanner, and lets the scanner's own request
//! count as a person's; the send time in the ledger flags the scanner itself.
//!
//! What stays undetected: a scanner that fetches later than the window with a browser's
//! user agent (some re-scan at click time, right before the person's own click, which is
//! then counted too: the click is real, only counted twice); and an open by a person
//! within the window (rare, and conservative for statistics).

/// Why a request was judged a machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    UserAgent,
    Head,
    SoonAfterSend,
    /// The provider flagged it (SendGrid `sg_machine_open`, Brevo `proxy_open`).
    Provider,
}

impl Rule {
    pub fn label(self) -> &'static str {
        match self {
            Rule::UserAgent => "user_agent",
            Rule::Head => "head",
            Rule::SoonAfterSend => "soon_after_send",
            Rule::Provider => "provider",
        }
    }
}

/// What is known of one open or click.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sighting<'a> {
    pub head: bool,
    /// `None` when the source tells no user agent (a provider event without one); a
    /// request that sent no `User-Agent` header is `Some("")`, which is a machine's.
    pub user_agent: Option<&'a str>,
    /// When it happened (Unix milliseconds).
    pub at_ms: i64,
    /// When the provider accepted the message, from the sender's ledger.
    pub sent_ms: Option<i64>,
    pub provider_says_machine: bool,
}

/// Applies the rules of the module documentation.
#[derive(Debug, Clone)]
pub struct Detector {
    /// Lower-cased.
    patterns: Vec<String>,
    window_ms: i64,
}

impl Detector {
    pub fn new(user_agents: &[String], window_s: u64) -> Self {
        Detector {
            patterns: user_agents
                .iter()
                .map(|p| p.trim().to_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
            window_ms: i64::try_from(window_s.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }

    /// The first rule that says "machine", if any.
    pub fn judge(&self, sighting: &Sighting<'_>) -> Option<Rule> {
        if sighting.provider_says_machine {
            return Some(Rule::Provider);
        }
        if sighting.head {
            return Some(Rule::Head);
        }
        if self.is_machine_agent(sighting.user_agent) {
            return Some(Rule::UserAgent);
        }
        match sighting.sent_ms {
            Some(sent) if sighting.at_ms.saturating_sub(sent) <= self.window_ms => {
                Some(Rule::SoonAfterSend)
            }
            _ => None,
        }
    }

    fn is_machine_agent(&self, user_agent: Option<&str>) -> bool {
        let Some(agent) = user_agent.map(str::trim) else {
            return false;
        };
        if agent.is_empty() || agent == "Mozilla/5.0" {
            return true;
        }
        let lower = agent.to_lowercase();
        self.patterns.iter().any(|p| lower.contains(p.as_str()))
    }
}

/// The send time in a sender ledger record (`sent|provider|id|attempt|MS`); `None` for a
/// claim, a failure or anything else.
pub fn sent_at_ms(record: &str) -> Option<i64> {
    let rest = record.strip_prefix("sent|")?;
    rest.rsplit('|').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped defaults of `config/tracker.toml`.
    fn detector() -> Detector {
        let config: crate::Config =
            tocsin_runtime::ConfigLoader::defaults_only(Some(crate::config::DEFAULTS))
                .load()
                .expect("the shipped configuration loads");
        Detector::new(
            &config.tracker.machine_user_agents,
            config.tracker.machine_window_s,
        )
    }

    const IPHONE_MAIL: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

    fn at(ua: &str, at_ms: i64, sent_ms: Option<i64>) -> Sighting<'_> {
        Sighting {
            user_agent: Some(ua),
            at_ms,
            sent_ms,
            ..Sighting::default()
        }
    }

    #[test]
    fn proxies_and_scanners_by_user_agent() {
        let d = detector();
        for ua in [
            "Mozilla/5.0",
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "Microsoft Office Existence Discovery",
            "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "python-requests/2.32.3",
            "curl/8.5.0",
            "",
        ] {
            assert_eq!(
                d.judge(&at(ua, 1_000_000, None)),
                Some(Rule::UserAgent),
                "{ua}"
            );
        }
        assert_eq!(
            d.judge(&Sighting {
                at_ms: 1,
                ..Sighting::default()
            }),
            None,
            "a provider event that names no user agent is not judged by it"
        );
        for ua in [IPHONE_MAIL, FIREFOX] {
            assert_eq!(d.judge(&at(ua, 1_000_000, None)), None, "{ua}");
        }
    }

    #[test]
    fn soon_after_the_send_is_a_machine() {
        let d = detector();
        let sent = 1_000_000;
        assert_eq!(
            d.judge(&at(FIREFOX, sent + 2_000, Some(sent))),
            Some(Rule::SoonAfterSend)
        );
        assert_eq!(
            d.judge(&at(FIREFOX, sent + 10_000, Some(sent))),
            Some(Rule::SoonAfterSend)
        );
        assert_eq!(d.judge(&at(FIREFOX, sent + 10_001, Some(sent))), None);
        // Clocks of two hosts disagree by a little: still the send's neighbourhood.
        assert_eq!(
            d.judge(&at(FIREFOX, sent - 300, Some(sent))),
            Some(Rule::SoonAfterSend)
        );
    }

    #[test]
    fn head_and_provider_verdicts() {
        let d = detector();
        let head = Sighting {
            head: true,
            ..at(FIREFOX, 5, None)
        };
        assert_eq!(d.judge(&head), Some(Rule::Head));
        let said = Sighting {
            provider_says_machine: true,
            ..at(FIREFOX, 5, None)
        };
        assert_eq!(d.judge(&said), Some(Rule::Provider));
    }

    #[test]
    fn ledger_records() {
        assert_eq!(
            sent_at_ms("sent|sendgrid|abc.filter|1|1700000000123"),
            Some(1_700_000_000_123)
        );
        assert_eq!(sent_at_ms("claim|sender-1|1700000000123"), None);
        assert_eq!(sent_at_ms("failed|bounced|550 no"), None);
        assert_eq!(sent_at_ms("sent|x|y|1|soon"), None);
    }
}
