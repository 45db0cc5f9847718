//! A readable text part from an HTML body, for templates that give none: block elements
//! become line breaks, list items dashes, links `text (url)`; styles, scripts and comments
//! disappear; entities are decoded; blank runs collapse.

/// Converts rendered HTML to text. Runs of white space, no-break spaces included, become
/// one space: a text part has no typography to keep.
pub fn from_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    let mut link: Option<String> = None;
    while let Some(lt) = rest.find('<') {
        push_text(&mut out, &rest[..lt]);
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            push_text(&mut out, rest);
            rest = "";
            break;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match (name.as_str(), closing) {
            ("style" | "script" | "head" | "title", false) => {
                let end = format!("</{name}");
                let lower = rest.to_ascii_lowercase();
                rest = lower.find(&end).map_or("", |at| &rest[at..]);
            }
            ("br", _) => out.push('\n'),
            ("li", false) => {
                newline(&mut out);
                out.push_str("- ");
            }
            (
                "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul" | "ol" | "table"
                | "tr" | "hr" | "blockquote",
                _,
            ) => {
                newline(&mut out);
                let ends_a_block = matches!(
                    name.as_str(),
                    "p" | "h1" | "h2" | "h3" | "ul" | "ol" | "table" | "blockquote"
                );
                if ends_a_block && closing {
                    out.push('\n');
                }
            }
            ("td" | "th", true) => out.push(' '),
            ("a", false) => link = attribute(tag, "href"),
            ("a", true) => {
                if let Some(url) = link.take() {
                    let shown = out.trim_end().ends_with(url.as_str());
                    if !url.is_empty() && !url.starts_with('#') && !shown {
                        out.push_str(&format!(" ({url})"));
                    }
                }
            }
            _ => {}
        }
    }
    push_text(&mut out, rest);
    tidy(&out)
}

pub(crate) fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find(&format!("{name}="))? + name.len() + 1;
    let value = &tag[at..];
    let value = match value.chars().next()? {
        q @ ('"' | '\'') => value[1..].split(q).next()?,
        _ => value.split(char::is_whitespace).next()?,
    };
    Some(decode(value))
}

fn push_text(out: &mut String, raw: &str) {
    let text = decode(raw);
    for (i, word) in text.split_whitespace().enumerate() {
        // Text right after an inline tag continues its word (`<b>Lyon</b>.`): a space only
        // where the HTML has one.
        let spaced = i > 0 || text.starts_with(char::is_whitespace);
        if spaced && !out.is_empty() && !out.ends_with(['\n', ' ']) {
            out.push(' ');
        }
        out.push_str(word);
    }
    if text.ends_with(char::is_whitespace) && !out.ends_with(['\n', ' ']) && !out.is_empty() {
        out.push(' ');
    }
}

fn newline(out: &mut String) {
    while out.ends_with(' ') {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Decodes the entities an HTML body holds: the named ones templates and Handlebars use,
/// and every numeric one (`&#39;`, `&#x3D;`). Anything else is left as written.
pub(crate) fn decode(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let entity = rest[1..]
            .find(';')
            .filter(|&end| end <= 10)
            .map(|end| &rest[1..=end]);
        let decoded = entity.and_then(|name| match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            "rsquo" => Some('’'),
            "lsquo" => Some('‘'),
            "laquo" => Some('«'),
            "raquo" => Some('»'),
            "euro" => Some('€'),
            _ => {
                let number = name.strip_prefix('#')?;
                let code = match number.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                    None => number.parse().ok()?,
                };
                char::from_u32(code)
            }
        });
        match (entity, decoded) {
            (Some(name), Some(c)) => {
                out.push(c);
                rest = &rest[name.len() + 2..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines().map(str::trim) {
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_campaign_email_reads_as_text_with_its_links() {
        let html = r#"<html><head><title>x</title><style>p { color: red }</style></head><body>
            <h1>Rentrée militante</h1>
            <p>Bonjour Camille,<br>on compte sur vous&nbsp;!</p>
            <!-- tracking -->
            <ul><li>Samedi : <a href="https://exemple.fr/agenda?a=1&amp;b=2">l'agenda</a></li>
                <li>Dimanche &amp; lundi</li></ul>
            <p><a href="https://exemple.fr">https://exemple.fr</a></p>
            <script>alert(1)</script>
        </body></html>"#;
        assert_eq!(
            from_html(html),
            "Rentrée militante\n\nBonjour Camille,\non compte sur vous !\n\n- Samedi : l'agenda (https://exemple.fr/agenda?a=1&b=2)\n- Dimanche & lundi\n\nhttps://exemple.fr"
        );
    }

    #[test]
    fn inline_tags_do_not_split_words() {
        assert_eq!(
            from_html("<p>Rendez-vous à <b>Lyon</b>. <i>Vite</i> !</p><p>x<span>y</span></p>"),
            "Rendez-vous à Lyon. Vite !\n\nxy"
        );
    }

    #[test]
    fn numeric_and_named_entities_decode_and_strays_stay() {
        assert_eq!(
            decode("a&#x3D;1&amp;b&#61;2 &#39;x&#x27; &laquo;oui&raquo; AT&T &unknown; &#xZZ;"),
            "a=1&b=2 'x' «oui» AT&T &unknown; &#xZZ;"
        );
    }

    #[test]
    fn escaped_contact_data_comes_back_as_plain_text() {
        assert_eq!(
            from_html("<p>Bonjour &lt;script&gt;</p>"),
            "Bonjour <script>"
        );
    }
}
