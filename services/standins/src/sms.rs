//! SMS parts as a provider counts them (GSM 03.38): 160 GSM-7 septets in one message, 153
//! per part when concatenated, extension-table characters costing two septets and never
//! split; anything outside GSM-7 makes the whole message UCS-2: 70 UTF-16 units in one
//! message, 67 per part, surrogate pairs never split.

/// The GSM-7 basic character set, in table order (the escape at 0x1B excluded).
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The extension table: each costs an escape plus the character.
const EXTENSION: &str = "\u{0c}^{}\\[~]|€";

fn gsm7_cost(c: char) -> Option<usize> {
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Packs units of the given costs into parts of `per_part`, never splitting one.
fn pack(costs: impl Iterator<Item = usize>, per_part: usize) -> u32 {
    let mut parts = 1;
    let mut used = 0;
    for cost in costs {
        if used + cost > per_part {
            parts += 1;
            used = 0;
        }
        used += cost;
    }
    parts
}

/// The number of parts `text` is sent as (at least one).
pub fn parts(text: &str) -> u32 {
    let gsm: Option<Vec<usize>> = text.chars().map(gsm7_cost).collect();
    match gsm {
        Some(costs) => {
            if costs.iter().sum::<usize>() <= 160 {
                1
            } else {
                pack(costs.into_iter(), 153)
            }
        }
        None => {
            if text.encode_utf16().count() <= 70 {
                1
            } else {
                pack(text.chars().map(char::len_utf16), 67)
            }
        }
    }
}

/// The parts of `text` sent as GSM-7 whatever it contains, each character outside GSM-7
/// replaced by one GSM-7 character (what Brevo does when `unicodeEnabled` is false).
pub fn parts_transliterated(text: &str) -> u32 {
    let costs: Vec<usize> = text.chars().map(|c| gsm7_cost(c).unwrap_or(1)).collect();
    if costs.iter().sum::<usize>() <= 160 {
        1
    } else {
        pack(costs.into_iter(), 153)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_table_has_127_characters_besides_the_escape() {
        assert_eq!(BASIC.chars().count(), 127);
    }

    #[test]
    fn gsm7_limits() {
        assert_eq!(parts(""), 1);
        assert_eq!(parts(&"a".repeat(160)), 1);
        assert_eq!(parts(&"a".repeat(161)), 2);
        assert_eq!(parts(&"a".repeat(306)), 2);
        assert_eq!(parts(&"a".repeat(307)), 3);
        // 80 euro signs are 160 septets: one message.
        assert_eq!(parts(&"€".repeat(80)), 1);
        // 152 + an escape pair does not fit in 153: the pair moves to the next part.
        assert_eq!(parts(&format!("{}€{}", "a".repeat(152), "a".repeat(10))), 2);
        assert_eq!(parts(&format!("Bonjour à tous ! {}", "a".repeat(143))), 1);
    }

    #[test]
    fn ucs2_limits() {
        assert_eq!(parts_transliterated(&"ç".repeat(160)), 1);
        assert_eq!(parts(&format!("ç{}", "a".repeat(69))), 1);
        assert_eq!(parts(&format!("ç{}", "a".repeat(70))), 2);
        assert_eq!(parts(&format!("ç{}", "a".repeat(133))), 2);
        assert_eq!(parts(&format!("ç{}", "a".repeat(134))), 3);
        // An emoji is two UTF-16 units and is not split: 66 + 2 > 67.
        assert_eq!(parts(&format!("{}😀{}", "a".repeat(66), "a".repeat(10))), 2);
    }
}
