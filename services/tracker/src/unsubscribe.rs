//! One-click unsubscribe (RFC 8058) and its confirmation page.
//!
//! - `POST /u/{token}` with the body `List-Unsubscribe=One-Click`, as
//!   `application/x-www-form-urlencoded` or `multipart/form-data` (mail clients send
//!   either), no cookie, no login: the signed token says who unsubscribes from what. The
//!   answer is 200 with a short page, never a redirect, once `Feedback(unsubscribed,
//!   opt_out_scope channel)` is acknowledged by the broker; 503 if it is not (the client
//!   may try again). Its event id is `tracker:unsubscribed:{campaign}:{contact}:{channel}`,
//!   so repeating the request is harmless.
//! - `GET /u/{token}`: the same link opened in a browser, or prefetched by a link scanner.
//!   It unsubscribes nobody: it shows a page (French or English, from `Accept-Language`)
//!   whose button POSTs the same form.
//!
//! A token that does not verify, or is not an unsubscribe token, gets 404 on both.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tocsin_contracts::v1;
use tocsin_renderer::tokens::{Claims, Purpose};

use crate::AppState;
use crate::engagement::header_str;
use crate::feedback;

/// The body field and value of RFC 8058.
pub const FIELD: &str = "List-Unsubscribe";
pub const VALUE: &str = "One-Click";

/// Largest body read: the form is 25 bytes, a multipart one a few hundred.
const BODY_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    French,
    English,
}

/// French or English, the first the client prefers (by `q`), French when it names neither
/// (Tocsin's campaigns are French).
pub fn language(headers: &HeaderMap) -> Language {
    let Some(accept) = header_str(headers, header::ACCEPT_LANGUAGE.as_str()) else {
        return Language::French;
    };
    let mut ranges: Vec<(f32, usize, &str)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, range)| {
            let mut parts = range.split(';');
            let tag = parts.next()?.trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some((q, i, tag))
        })
        .filter(|(q, _, _)| *q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, tag) in ranges {
        let primary = tag
            .split('-')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match primary.as_str() {
            "fr" => return Language::French,
            "en" => return Language::English,
            _ => {}
        }
    }
    Language::French
}

struct Words {
    lang: &'static str,
    title: &'static str,
    question: &'static str,
    button: &'static str,
    done: &'static str,
    failed: &'static str,
    unknown: &'static str,
}

fn words(language: Language, channel: &str) -> Words {
    let sms = channel == "sms";
    match language {
        Language::French => Words {
            lang: "fr",
            title: "Désinscription",
            question: if sms {
                "Ne plus recevoir nos SMS ?"
            } else {
                "Ne plus recevoir nos e-mails ?"
            },
            button: "Me désinscrire",
            done: if sms {
                "C'est fait : vous ne recevrez plus nos SMS."
            } else {
                "C'est fait : vous ne recevrez plus nos e-mails."
            },
            failed: "Votre demande n'a pas pu être enregistrée. Réessayez dans un instant.",
            unknown: "Ce lien de désinscription n'est pas valide.",
        },
        Language::English => Words {
            lang: "en",
            title: "Unsubscribe",
            question: if sms {
                "Stop receiving our text messages?"
            } else {
                "Stop receiving our e-mails?"
            },
            button: "Unsubscribe",
            done: if sms {
                "Done: you will not receive our text messages any more."
            } else {
                "Done: you will not receive our e-mails any more."
            },
            failed: "Your request could not be recorded. Please try again in a moment.",
            unknown: "This unsubscribe link is not valid.",
        },
    }
}

/// A small page; nothing in it comes from the request.
fn page_response(status: StatusCode, w: &Words, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em}}\
         button{{font-size:1.1em;padding:.5em 1.2em}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>\n",
        lang = w.lang,
        title = w.title,
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                ),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                axum::http::HeaderName::from_static("x-robots-tag"),
                HeaderValue::from_static("noindex"),
            ),
        ],
        html,
    )
        .into_response()
}

fn verified(state: &AppState, token: &str) -> Option<Claims> {
    state
        .signer
        .verify(token)
        .ok()
        .filter(|c| c.purpose == Purpose::Unsubscribe && !c.contact_id.is_empty())
}

fn count(state: &AppState, outcome: &str) {
    state
        .metrics
        .unsubscribes
        .with_label_values(&["link", outcome])
        .inc();
}

/// `GET /u/{token}`: the confirmation page. Never unsubscribes.
pub async fn page(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let language = language(&headers);
    let Some(claims) = verified(&state, &token) else {
        let w = words(language, "email");
        return page_response(StatusCode::NOT_FOUND, &w, &format!("<p>{}</p>", w.unknown));
    };
    let w = words(language, &claims.channel);
    // No `action`: the form posts to this very URL, whatever prefix a proxy adds.
    let form = format!(
        "<p>{question}</p><form method=\"post\">\
         <input type=\"hidden\" name=\"{FIELD}\" value=\"{VALUE}\">\
         <button type=\"submit\">{button}</button></form>",
        question = w.question,
        button = w.button,
    );
    page_response(StatusCode::OK, &w, &form)
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body does not say {FIELD}={VALUE}")]
    NotOneClick,
    #[error("unreadable body: {0}")]
    Unreadable(String),
}

/// Whether the body carries `List-Unsubscribe=One-Click`, in either content type.
pub async fn confirms(request: Request<Body>) -> Result<(), BodyError> {
    let multipart = header_str(request.headers(), header::CONTENT_TYPE.as_str())
        .map(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
        .unwrap_or(false);
    let found = if multipart {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| BodyError::Unreadable(e.body_text()))?;
        let mut found = false;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| BodyError::Unreadable(e.body_text()))?
        {
            let named = field.name() == Some(FIELD);
            let value = field
                .text()
                .await
                .map_err(|e| BodyError::Unreadable(e.body_text()))?;
            found |= named && value.trim() == VALUE;
        }
        found
    } else {
        // `application/x-www-form-urlencoded`, or no content type at all.
        let body = axum::body::to_bytes(request.into_body(), BODY_LIMIT)
            .await
            .map_err(|e| BodyError::Unreadable(e.to_string()))?;
        form_urlencoded::parse(&body).any(|(k, v)| k == FIELD && v.trim() == VALUE)
    };
    if found {
        Ok(())
    } else {
        Err(BodyError::NotOneClick)
    }
}

/// The event of a one-click unsubscribe: the same id however often it is repeated.
pub fn unsubscribed(claims: &Claims) -> v1::Feedback {
    let channel = feedback::channel_of(&claims.channel);
    let key =
        tocsin_planner::engine::idempotency_key(&claims.campaign_id, &claims.contact_id, channel);
    let mut event = feedback::event(
        v1::FeedbackKind::Unsubscribed,
        format!("tracker:unsubscribed:{key}"),
    );
    event.idempotency_key = key;
    feedback::attribute(&mut event, &claims.campaign_id);
    event.contact_id = claims.contact_id.clone();
    event.channel = channel.into();
    event.reason = v1::Reason::Unsubscribed.into();
    event.opt_out_scope = v1::OptOutScope::Channel.into();
    event
}

/// `POST /u/{token}`: RFC 8058 one-click unsubscribe.
pub async fn one_click(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    request: Request<Body>,
) -> Response {
    let language = language(request.headers());
    let Some(claims) = verified(&state, &token) else {
        count(&state, "bad_token");
        let w = words(language, "email");
        return page_response(StatusCode::NOT_FOUND, &w, &format!("<p>{}</p>", w.unknown));
    };
    let w = words(language, &claims.channel);
    if let Err(error) = confirms(request).await {
        count(&state, "invalid");
        tracing::info!(%error, "tracker: unsubscribe POST without the one-click field");
        return page_response(
            StatusCode::BAD_REQUEST,
            &w,
            &format!("<p>{}</p>", w.question),
        );
    }
    match state.publisher.publish(&unsubscribed(&claims)).await {
        Ok(()) => {
            count(&state, "recorded");
            page_response(StatusCode::OK, &w, &format!("<p>{}</p>", w.done))
        }
        Err(error) => {
            count(&state, "error");
            tracing::error!(%error, "tracker: an unsubscribe could not be published");
            let mut response = page_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &w,
                &format!("<p>{}</p>", w.failed),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_str(accept).expect("header"),
        );
        headers
    }

    #[test]
    fn the_language_follows_accept_language() {
        assert_eq!(language(&HeaderMap::new()), Language::French);
        assert_eq!(language(&with("en-GB,en;q=0.9")), Language::English);
        assert_eq!(language(&with("fr-FR,fr;q=0.9,en;q=0.8")), Language::French);
        assert_eq!(
            language(&with("de-DE,en;q=0.5,fr;q=0.3")),
            Language::English
        );
        assert_eq!(language(&with("en;q=0.2,fr;q=0.8")), Language::French);
        assert_eq!(language(&with("de,es")), Language::French);
        assert_eq!(language(&with("en;q=0,fr;q=0.1")), Language::French);
    }

    #[test]
    fn a_sequence_steps_unsubscribe_names_the_step() {
        let step = tocsin_planner::sequence::StepRef {
            sequence_id: "welcome".into(),
            enrolment: 1,
            step: 2,
        };
        let claims = Claims {
            purpose: tocsin_renderer::tokens::Purpose::Unsubscribe,
            campaign_id: step.group(),
            contact_id: "c-9".into(),
            channel: "email".into(),
            url: String::new(),
        };
        let event = unsubscribed(&claims);
        let key = step.idempotency_key("c-9", v1::Channel::Email);
        assert_eq!(event.idempotency_key, key);
        assert_eq!(
            event.meta.as_ref().map(|m| m.event_id.as_str()),
            Some(format!("tracker:unsubscribed:{key}").as_str())
        );
        assert_eq!(
            (
                event.campaign_id.as_str(),
                event.sequence_id.as_str(),
                event.enrolment_id.as_str(),
                event.step,
                event.contact_id.as_str(),
            ),
            ("", "welcome", "e1", 2, "c-9")
        );
    }

    async fn body(content_type: &str, body: &'static str) -> Result<(), BodyError> {
        let request = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("request");
        confirms(request).await
    }

    #[tokio::test]
    async fn both_content_types_are_read() {
        assert!(
            body(
                "application/x-www-form-urlencoded",
                "List-Unsubscribe=One-Click"
            )
            .await
            .is_ok()
        );
        let multipart = "--b0undary\r\n\
            Content-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n\
            One-Click\r\n\
            --b0undary--\r\n";
        assert!(
            body("multipart/form-data; boundary=b0undary", multipart)
                .await
                .is_ok()
        );
        assert!(matches!(
            body("application/x-www-form-urlencoded", "List-Unsubscribe=Nope").await,
            Err(BodyError::NotOneClick)
        ));
        assert!(matches!(
            body("multipart/form-data", multipart).await,
            Err(BodyError::Unreadable(_))
        ));
    }
}
