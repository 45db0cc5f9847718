//! SMS encodings and parts (GSM 03.38 / 3GPP TS 23.038).
//!
//! A message whose every character is in the GSM 7-bit default alphabet (or its extension
//! table, which costs two septets: escape + character) is sent in GSM-7: 160 septets in
//! one part, 153 per part when concatenated (the user-data header takes the rest). Any
//! other character switches the whole message to UCS-2: 70 UTF-16 code units in one part,
//! 67 per part. An escape pair is never split across two parts, nor is a surrogate pair
//! (an emoji costs two units). Providers bill and throttle by part.

use std::borrow::Cow;

/// The GSM 7-bit default alphabet, in code order (0x1B, the escape, is a placeholder).
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: each costs two septets (escape, then the character).
pub const EXTENSION: [char; 10] = ['\u{0c}', '^', '{', '}', '\\', '[', '~', ']', '|', '€'];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// What a text costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    pub parts: usize,
}

/// Septets a character costs in GSM-7; `None` when it is not in the alphabet.
pub fn gsm7_cost(c: char) -> Option<usize> {
    if c != '\u{1b}' && BASIC.contains(&c) {
        Some(1)
    } else if EXTENSION.contains(&c) {
        Some(2)
    } else {
        None
    }
}

/// GSM-7 when every character fits, else UCS-2.
pub fn encoding(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_cost(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

fn cost(c: char, encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gsm7 => gsm7_cost(c).unwrap_or(1),
        Encoding::Ucs2 => c.len_utf16(),
    }
}

fn limits(encoding: Encoding) -> (usize, usize) {
    match encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (70, 67),
    }
}

/// The encoding, size and number of parts of `text`.
pub fn layout(text: &str) -> Layout {
    let encoding = encoding(text);
    let units: usize = text.chars().map(|c| cost(c, encoding)).sum();
    let parts = if units <= limits(encoding).0 {
        1
    } else {
        split(text).len()
    };
    Layout {
        encoding,
        units,
        parts,
    }
}

/// The parts `text` is sent as. A character is never cut: an escape pair or a surrogate
/// pair that does not fit in what is left of a part starts the next one.
pub fn split(text: &str) -> Vec<&str> {
    let encoding = encoding(text);
    let (single, multi) = limits(encoding);
    let total: usize = text.chars().map(|c| cost(c, encoding)).sum();
    if total <= single {
        return vec![text];
    }
    let mut parts = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (at, c) in text.char_indices() {
        let n = cost(c, encoding);
        if used + n > multi {
            parts.push(&text[start..at]);
            start = at;
            used = 0;
        }
        used += n;
    }
    parts.push(&text[start..]);
    parts
}

/// Replaces the typographic characters that push French text out of GSM-7 by their plain
/// equivalents, changing no letter: ’ ‘ → ', « » “ ” → ", non-breaking and thin spaces →
/// space, … → ..., – — → -. Accented letters outside GSM-7 (ç, â, ê, î, ô, û, œ) are kept:
/// changing them would change the words.
pub fn normalise_french(text: &str) -> Cow<'_, str> {
    let needs = |c: char| {
        matches!(
            c,
            '’' | '‘'
                | '«'
                | '»'
                | '“'
                | '”'
                | '\u{a0}'
                | '\u{202f}'
                | '\u{2009}'
                | '…'
                | '–'
                | '—'
        )
    };
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '’' | '‘' => out.push('\''),
            '“' | '”' => out.push('"'),
            // « mot » → "mot": the spaces inside French guillemets go too.
            '«' => {
                out.push('"');
                while chars
                    .peek()
                    .is_some_and(|n| matches!(n, ' ' | '\u{a0}' | '\u{202f}'))
                {
                    chars.next();
                }
            }
            '»' => {
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push('"');
            }
            '\u{a0}' | '\u{202f}' | '\u{2009}' => out.push(' '),
            '…' => out.push_str("..."),
            '–' | '—' => out.push('-'),
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gsm(n: usize) -> String {
        "a".repeat(n)
    }

    #[test]
    fn every_extension_character_costs_two_septets() {
        for c in EXTENSION {
            let text = format!("x{c}");
            assert_eq!(
                layout(&text),
                Layout {
                    encoding: Encoding::Gsm7,
                    units: 3,
                    parts: 1
                },
                "{c:?}"
            );
        }
        assert_eq!(layout("Prix : 10€").units, 11);
        assert_eq!(EXTENSION.len(), 10);
    }

    #[test]
    fn the_basic_alphabet_is_gsm7_and_escape_is_not_a_character() {
        for c in BASIC.iter().filter(|c| **c != '\u{1b}') {
            assert_eq!(gsm7_cost(*c), Some(1), "{c:?}");
        }
        assert_eq!(gsm7_cost('\u{1b}'), None);
        assert_eq!(
            encoding("Ça coûte 5 € à Noël"),
            Encoding::Ucs2,
            "û is not GSM-7"
        );
        assert_eq!(encoding("Ça a été à Paris, 5 € !"), Encoding::Gsm7);
        assert_eq!(encoding("Noël"), Encoding::Ucs2, "ë is not GSM-7");
    }

    #[test]
    fn gsm7_boundaries() {
        assert_eq!(
            layout(""),
            Layout {
                encoding: Encoding::Gsm7,
                units: 0,
                parts: 1
            }
        );
        assert_eq!(layout(&gsm(160)).parts, 1);
        assert_eq!(layout(&gsm(161)).parts, 2);
        assert_eq!(layout(&gsm(306)).parts, 2);
        assert_eq!(layout(&gsm(307)).parts, 3);
        // 159 septets + one 2-septet character = 161: two parts.
        assert_eq!(layout(&format!("{}€", gsm(159))).parts, 2);
        assert_eq!(layout(&format!("{}€", gsm(158))).parts, 1);
    }

    #[test]
    fn an_escape_pair_is_never_split_across_parts() {
        // 152 septets then '€' (2): the pair would straddle 153, so it opens part two.
        let text = format!("{}€{}", gsm(152), gsm(10));
        let parts = split(&text);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], gsm(152));
        assert!(parts[1].starts_with('€'));
        assert_eq!(layout(&text).parts, 2);
        // With 151 before it, the pair fits exactly in the first part (151 + 2 = 153).
        let text = format!("{}€{}", gsm(151), gsm(10));
        assert!(split(&text)[0].ends_with('€'));
    }

    #[test]
    fn ucs2_boundaries_and_emoji() {
        let ucs = |n: usize| "ê".repeat(n);
        assert_eq!(
            layout(&ucs(70)),
            Layout {
                encoding: Encoding::Ucs2,
                units: 70,
                parts: 1
            }
        );
        assert_eq!(layout(&ucs(71)).parts, 2);
        assert_eq!(layout(&ucs(134)).parts, 2);
        assert_eq!(layout(&ucs(135)).parts, 3);
        // An emoji is two UTF-16 units and switches a GSM-7 text to UCS-2.
        assert_eq!(
            layout("Merci 🎉"),
            Layout {
                encoding: Encoding::Ucs2,
                units: 8,
                parts: 1
            }
        );
        assert_eq!(layout(&format!("{}🎉", gsm(68))).units, 70);
        assert_eq!(layout(&format!("{}🎉", gsm(69))).parts, 2);
        // Never split a surrogate pair: 66 units then an emoji (2) opens part two.
        let text = format!("{}🎉{}", gsm(66), gsm(10));
        let parts = split(&text);
        assert_eq!(parts[0], gsm(66));
        assert!(parts[1].starts_with('🎉'));
    }

    #[test]
    fn french_normalisation_keeps_words_and_can_save_gsm7() {
        let text = "Rendez\u{a0}vous samedi à 10\u{202f}h – l’équipe vous attend «\u{a0}place Bellecour\u{a0}»…";
        assert_eq!(encoding(text), Encoding::Ucs2);
        let plain = normalise_french(text);
        assert_eq!(
            plain,
            "Rendez vous samedi à 10 h - l'équipe vous attend \"place Bellecour\"..."
        );
        assert_eq!(encoding(&plain), Encoding::Gsm7);
        // Letters outside GSM-7 stay: the text stays UCS-2 rather than change a word.
        assert_eq!(normalise_french("Ça coûte cher"), "Ça coûte cher");
        assert!(matches!(normalise_french("rien à faire"), Cow::Borrowed(_)));
    }
}
