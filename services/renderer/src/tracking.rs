//! Engagement tracking through the tracker, per campaign: the open pixel and click
//! rewriting. Both carry signed tokens (see [`crate::tokens`]); a click token holds its
//! destination, so the tracker redirects only where Tocsin itself pointed.
//!
//! Tracker routes: `/o/{token}` (the pixel), `/c/{token}` (a click), `/u/{token}`
//! (unsubscribe, see [`crate::compliance`]).

use crate::text::attribute;
use crate::tokens::{Claims, Purpose, Signer, TokenError};

/// Who a tracked link is about.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub campaign_id: &'a str,
    pub contact_id: &'a str,
    pub channel: &'a str,
}

impl Recipient<'_> {
    fn claims(&self, purpose: Purpose, url: &str) -> Claims {
        Claims {
            purpose,
            campaign_id: self.campaign_id.to_owned(),
            contact_id: self.contact_id.to_owned(),
            channel: self.channel.to_owned(),
            url: url.to_owned(),
        }
    }
}

fn tracker_url(base: &str, route: char, token: &str) -> String {
    format!("{}/{route}/{token}", base.trim_end_matches('/'))
}

/// Escapes a URL for a double-quoted HTML attribute.
fn attribute_value(url: &str) -> String {
    url.replace('&', "&amp;").replace('"', "&quot;")
}

/// The click URL that redirects to `url`.
pub fn click_url(
    base: &str,
    signer: &Signer,
    who: Recipient<'_>,
    url: &str,
) -> Result<String, TokenError> {
    let token = signer.sign(&who.claims(Purpose::Click, url))?;
    Ok(tracker_url(base, 'c', &token))
}

/// The open pixel's URL.
pub fn open_url(base: &str, signer: &Signer, who: Recipient<'_>) -> Result<String, TokenError> {
    let token = signer.sign(&who.claims(Purpose::Open, ""))?;
    Ok(tracker_url(base, 'o', &token))
}

/// Points every `http(s)` link of `<a>` and `<area>` elements at the tracker. Other links
/// (`mailto:`, `tel:`, anchors) and links already pointing at the tracker stay as written.
/// Returns the new HTML and how many links were rewritten.
pub fn rewrite_links(
    html: &str,
    base: &str,
    signer: &Signer,
    who: Recipient<'_>,
) -> Result<(String, usize), TokenError> {
    let base = base.trim_end_matches('/');
    let mut out = String::with_capacity(html.len() + html.len() / 4);
    let mut rest = html;
    let mut rewritten = 0;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        rest = &rest[lt..];
        let Some(end) = tag_end(rest) else {
            break;
        };
        let tag = &rest[..=end];
        rest = &rest[end + 1..];
        let name: String = tag[1..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        let destination = match name.as_str() {
            "a" | "area" => attribute(&tag[1..tag.len() - 1], "href"),
            _ => None,
        };
        match destination.filter(|url| is_trackable(url, base)) {
            Some(url) => {
                let tracked = click_url(base, signer, who, url.trim())?;
                out.push_str(&replace_href(tag, &attribute_value(&tracked)));
                rewritten += 1;
            }
            None => out.push_str(tag),
        }
    }
    out.push_str(rest);
    Ok((out, rewritten))
}

/// Where the tag starting at `s[0] == '<'` ends, quotes respected.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, b) in s.bytes().enumerate().skip(1) {
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn is_trackable(url: &str, base: &str) -> bool {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")) && !url.starts_with(base)
}

/// The tag with its `href` value replaced (the value is already attribute-escaped).
fn replace_href(tag: &str, value: &str) -> String {
    let lower = tag.to_ascii_lowercase();
    let Some(at) = find_href(&lower) else {
        return tag.to_owned();
    };
    let start = at + "href=".len();
    let after = &tag[start..];
    let value_len = match after.as_bytes().first() {
        Some(&q @ (b'"' | b'\'')) => after[1..]
            .find(q as char)
            .map_or(after.len(), |end| end + 2),
        _ => after
            .find(|c: char| c.is_whitespace() || c == '>')
            .unwrap_or(after.len()),
    };
    format!("{}\"{value}\"{}", &tag[..start], &tag[start + value_len..])
}

/// The `href=` attribute itself, not `data-href=` or text inside another attribute.
fn find_href(lower: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = lower[from..].find("href=") {
        let at = from + found;
        if lower[..at].ends_with(|c: char| c.is_whitespace()) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The 1×1 pixel element for `url`.
pub fn pixel(url: &str) -> String {
    format!(
        "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
        attribute_value(url)
    )
}

/// Puts the pixel at the end of the body (inside it when there is a `</body>`).
pub fn add_pixel(html: &str, url: &str) -> String {
    let img = pixel(url);
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(at) => format!("{}{img}{}", &html[..at], &html[at..]),
        None => format!("{html}{img}"),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    const BASE: &str = "https://t.exemple.fr";

    fn signer() -> Signer {
        Signer::new(SecretString::from("k"))
    }

    fn who() -> Recipient<'static> {
        Recipient {
            campaign_id: "cmp-1",
            contact_id: "c-1",
            channel: "email",
        }
    }

    fn token_of(url: &str) -> &str {
        url.rsplit('/').next().expect("token")
    }

    #[test]
    fn links_go_through_the_tracker_and_carry_their_destination() {
        let html = concat!(
            "<p><a class=\"btn\" href=\"https://exemple.fr/agenda?id=12&amp;utm_source=tocsin\">Agenda</a> ",
            "<A HREF='http://exemple.fr/don'>Don</A> ",
            "<a href=https://exemple.fr/nu>Nu</a> ",
            "<a href=\"mailto:contact@exemple.fr\">Écrire</a> <a href=\"tel:+33100000000\">Appeler</a> ",
            "<a href=\"#haut\">Haut</a> <a data-href=\"x\" title=\"a > b\">Rien</a> ",
            "<a href=\"https://t.exemple.fr/u/abc\">Désinscription</a></p>"
        );
        let (out, n) = rewrite_links(html, BASE, &signer(), who()).expect("rewrite");
        assert_eq!(n, 3, "{out}");
        let links: Vec<String> = out
            .split("<a")
            .chain(out.split("<A"))
            .filter_map(|piece| attribute(piece.split('>').next().unwrap_or_default(), "href"))
            .filter(|url| url.starts_with("https://t.exemple.fr/c/"))
            .collect();
        let destinations: Vec<String> = links
            .iter()
            .map(|url| signer().verify(token_of(url)).expect("signed").url)
            .collect();
        assert_eq!(
            destinations,
            [
                "https://exemple.fr/agenda?id=12&utm_source=tocsin",
                "https://exemple.fr/nu",
                "http://exemple.fr/don",
            ]
        );
        for kept in [
            "mailto:contact@exemple.fr",
            "tel:+33100000000",
            "href=\"#haut\"",
            "data-href=\"x\" title=\"a > b\"",
            "https://t.exemple.fr/u/abc",
            "class=\"btn\"",
            ">Agenda</a>",
        ] {
            assert!(out.contains(kept), "{kept} in {out}");
        }
    }

    #[test]
    fn a_link_made_of_escaped_contact_data_points_where_the_writer_meant() {
        // Handlebars writes `=` as `&#x3D;` in attribute values.
        let html = "<a href=\"https://exemple.fr/r?commune&#x3D;Saint-Denis\">x</a>";
        let (out, _) = rewrite_links(html, BASE, &signer(), who()).expect("rewrite");
        let url = attribute(&out[3..], "href").expect("href");
        let claims = signer().verify(token_of(&url)).expect("signed");
        assert_eq!(claims.url, "https://exemple.fr/r?commune=Saint-Denis");
        assert_eq!(
            (claims.purpose, claims.contact_id.as_str()),
            (Purpose::Click, "c-1")
        );
    }

    #[test]
    fn the_pixel_sits_at_the_end_of_the_body() {
        let url = open_url(BASE, &signer(), who()).expect("url");
        assert_eq!(
            signer().verify(token_of(&url)).expect("signed").purpose,
            Purpose::Open
        );
        let html = add_pixel("<html><body><p>x</p></BODY></html>", &url);
        assert!(html.ends_with("\"></BODY></html>"), "{html}");
        assert!(html.contains("width=\"1\" height=\"1\""));
        assert!(
            add_pixel("<p>x</p>", &url).starts_with("<p>x</p><img src=\"https://t.exemple.fr/o/")
        );
    }
}
