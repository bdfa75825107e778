//! Shona numbers in words, as counted on their own (not agreeing with a noun).
//!
//! Checked against <https://www.languagesandnumbers.com/how-to-count-in-shona/en/sna/>
//! and learn101's Shona lesson: units `potsi piri tatu ina shanu tanhatu
//! nomwe sere pfumbamwe`, tens `gumi`, `makumi maviri` … `makumi
//! mapfumbamwe`, hundreds `zana`, `mazana maviri` …, thousands `churu`,
//! `zviuru zviviri` …, and a part after a larger one joined by `ne-` in its
//! class-9 form: 11 `gumi neimwe`, 12 `gumi nembiri`, 13 `gumi nenhatu`,
//! 16 `gumi nenhanhatu`. The PyPI package `toshona` differs (no word for 0,
//! `pfumpamwe`, no million); where the two disagree these tables follow the
//! grammar references. A million is the loan `miriyoni`; from ten thousand on
//! the count of thousands is said as a number of its own (`zviuru gumi`).

/// 0-9 on their own; 0 is the loan `ziro`.
const UNITS: [&str; 10] = [
    "ziro",
    "potsi",
    "piri",
    "tatu",
    "ina",
    "shanu",
    "tanhatu",
    "nomwe",
    "sere",
    "pfumbamwe",
];

/// 1-9 after `ne-` (class 9 agreement): `neimwe`, `nembiri`, `nenhatu` …
const JOINED: [&str; 10] = [
    "",
    "imwe",
    "mbiri",
    "nhatu",
    "ina",
    "shanu",
    "nhanhatu",
    "nomwe",
    "sere",
    "pfumbamwe",
];

/// 2-9 counting class-6 nouns (`makumi`, `mazana`, `madhora`).
pub(super) const CLASS6: [&str; 10] = [
    "",
    "",
    "maviri",
    "matatu",
    "mana",
    "mashanu",
    "matanhatu",
    "manomwe",
    "masere",
    "mapfumbamwe",
];

/// 2-9 counting class-8 nouns (`zviuru`).
const CLASS8: [&str; 10] = [
    "",
    "",
    "zviviri",
    "zvitatu",
    "zvina",
    "zvishanu",
    "zvitanhatu",
    "zvinomwe",
    "zvisere",
    "zvipfumbamwe",
];

/// A digit said alone, as in a phone number.
pub fn digit(d: u8) -> &'static str {
    UNITS[usize::from(d % 10)]
}

/// The largest number said in words (the millions counted up to 999);
/// past it, digit by digit.
pub const MAX: u64 = 999_999_999;

/// `n` in words, counted on its own: 2024 is `zviuru zviviri nemakumi maviri
/// neina`. `None` past [`MAX`].
pub fn cardinal(n: u64) -> Option<String> {
    if n > MAX {
        return None;
    }
    if n < 10 {
        return Some(UNITS[n as usize].to_string());
    }
    let mut parts = Vec::new();
    let millions = n / 1_000_000;
    let thousands = (n / 1000) % 1000;
    let rest = n % 1000;
    if millions > 0 {
        parts.push(match millions {
            1 => "miriyoni".to_string(),
            2..=9 => format!("mamiriyoni {}", CLASS6[millions as usize]),
            _ => format!("mamiriyoni {}", below_thousand(millions)),
        });
    }
    if thousands > 0 {
        parts.push(match thousands {
            1 => "churu".to_string(),
            2..=9 => format!("zviuru {}", CLASS8[thousands as usize]),
            _ => format!("zviuru {}", below_thousand(thousands)),
        });
    }
    if rest > 0 {
        parts.push(if parts.is_empty() {
            below_thousand(rest)
        } else {
            joined_below_thousand(rest)
        });
    }
    Some(join(parts))
}

/// 10-999, on its own.
fn below_thousand(n: u64) -> String {
    debug_assert!((1..1000).contains(&n));
    if n < 10 {
        return UNITS[n as usize].to_string();
    }
    let hundreds = n / 100;
    let tens = (n / 10) % 10;
    let units = n % 10;
    let mut parts = Vec::new();
    if hundreds > 0 {
        parts.push(match hundreds {
            1 => "zana".to_string(),
            h => format!("mazana {}", CLASS6[h as usize]),
        });
    }
    if tens > 0 {
        parts.push(match tens {
            1 => "gumi".to_string(),
            t => format!("makumi {}", CLASS6[t as usize]),
        });
    }
    if units > 0 {
        parts.push(if parts.is_empty() {
            UNITS[units as usize].to_string()
        } else {
            JOINED[units as usize].to_string()
        });
    }
    join(parts)
}

/// 1-999 after a larger part: its first word takes `ne-` too.
fn joined_below_thousand(n: u64) -> String {
    if n < 10 {
        JOINED[n as usize].to_string()
    } else {
        below_thousand(n)
    }
}

/// Parts after the first are joined by `ne-` ("and").
fn join(parts: Vec<String>) -> String {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(" ne");
        }
        out.push_str(p);
    }
    out
}

/// The `n`-th, agreeing with a class-9 noun (`nguva`, `imba`): `yekutanga`,
/// `yechipiri`, `yechitatu` … `yegumi`, `yegumi neimwe`.
pub fn ordinal(n: u64) -> Option<String> {
    Some(match n {
        0 => return None,
        1 => "yekutanga".to_string(),
        2..=9 => format!("yechi{}", UNITS[n as usize]),
        _ => format!("ye{}", cardinal(n)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_from_0_to_a_million() {
        let table: &[(u64, &str)] = &[
            (0, "ziro"),
            (1, "potsi"),
            (2, "piri"),
            (4, "ina"),
            (6, "tanhatu"),
            (9, "pfumbamwe"),
            (10, "gumi"),
            (11, "gumi neimwe"),
            (12, "gumi nembiri"),
            (13, "gumi nenhatu"),
            (15, "gumi neshanu"),
            (16, "gumi nenhanhatu"),
            (19, "gumi nepfumbamwe"),
            (20, "makumi maviri"),
            (21, "makumi maviri neimwe"),
            (30, "makumi matatu"),
            (40, "makumi mana"),
            (54, "makumi mashanu neina"),
            (99, "makumi mapfumbamwe nepfumbamwe"),
            (100, "zana"),
            (101, "zana neimwe"),
            (110, "zana negumi"),
            (120, "zana nemakumi maviri"),
            (200, "mazana maviri"),
            (999, "mazana mapfumbamwe nemakumi mapfumbamwe nepfumbamwe"),
            (1000, "churu"),
            (1001, "churu neimwe"),
            (1100, "churu nezana"),
            (2000, "zviuru zviviri"),
            (2024, "zviuru zviviri nemakumi maviri neina"),
            (9000, "zviuru zvipfumbamwe"),
            (10_000, "zviuru gumi"),
            (25_500, "zviuru makumi maviri neshanu nemazana mashanu"),
            (100_000, "zviuru zana"),
            (
                999_999,
                "zviuru mazana mapfumbamwe nemakumi mapfumbamwe nepfumbamwe nemazana mapfumbamwe nemakumi mapfumbamwe nepfumbamwe",
            ),
            (1_000_000, "miriyoni"),
            (2_000_000, "mamiriyoni maviri"),
            (1_000_005, "miriyoni neshanu"),
        ];
        for (n, words) in table {
            assert_eq!(cardinal(*n).as_deref(), Some(*words), "{n}");
        }
        assert_eq!(
            cardinal(MAX).as_deref(),
            Some(
                "mamiriyoni mazana mapfumbamwe nemakumi mapfumbamwe nepfumbamwe nezviuru mazana mapfumbamwe nemakumi mapfumbamwe nepfumbamwe nemazana mapfumbamwe nemakumi mapfumbamwe nepfumbamwe"
            )
        );
        assert_eq!(cardinal(MAX + 1), None);
        assert_eq!(cardinal(u64::MAX), None);
    }

    #[test]
    fn every_number_to_a_million_has_words_and_no_empty_part() {
        for n in 0..=1_000_000u64 {
            let w = cardinal(n).unwrap();
            assert!(
                !w.is_empty() && !w.contains("  ") && !w.ends_with(' '),
                "{n}: {w:?}"
            );
            assert!(!w.contains("ne "), "{n}: {w:?}");
        }
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal(1).as_deref(), Some("yekutanga"));
        assert_eq!(ordinal(2).as_deref(), Some("yechipiri"));
        assert_eq!(ordinal(3).as_deref(), Some("yechitatu"));
        assert_eq!(ordinal(10).as_deref(), Some("yegumi"));
        assert_eq!(ordinal(21).as_deref(), Some("yemakumi maviri neimwe"));
        assert_eq!(ordinal(0), None);
    }
}
