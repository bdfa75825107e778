//! Shona text as it is said: times, dates, money, percentages, phone
//! numbers, ordinals, decimals and numbers in words, the English month
//! names in Shona, and the abbreviations a clinic's text uses.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::numbers::{CLASS6, cardinal, digit, ordinal};
use crate::lang::replace_all;

/// The month names, January (Ndira) to December (Zvita).
pub const MONTHS: [&str; 12] = [
    "Ndira",
    "Kukadzi",
    "Kurume",
    "Kubvumbi",
    "Chivabvu",
    "Chikumi",
    "Chikunguru",
    "Nyamavhuvhu",
    "Gunyana",
    "Gumiguru",
    "Mbudzi",
    "Zvita",
];

const ENGLISH_MONTHS: &str = "January|February|March|April|May|June|July|August|September|October|November|December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec";

/// Month names taken alone: only the whole English names, and not "May"
/// (an English word too); a day before a month (`15 May`) makes any form a
/// month.
const WHOLE_MONTHS: &str =
    "January|February|March|April|June|July|August|September|October|November|December";

/// Each pattern keeps the character before it (group 1) so that a number
/// is never taken from the middle of another.
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(^|[^\d:.])([01]?\d|2[0-3])(:|h)([0-5]\d)(?:\s?([ap])\.?m\.?\b)?").unwrap()
});
/// `8.30am`: a point between hour and minutes makes a time only with am/pm.
static TIME_POINT_AMPM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(^|[^\d:.])(1[0-2]|0?[1-9])\.([0-5]\d)\s?([ap])\.?m\.?\b").unwrap()
});
static HOUR_AMPM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)(^|[^\d:])(1[0-2]|0?[1-9])\s?([ap])\.?m\.?\b").unwrap());
static DATE_NUMERIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^\d/])(\d{1,2})/(\d{1,2})/(\d{4})\b|(^|[^\d-])(\d{4})-(\d{2})-(\d{2})\b")
        .unwrap()
});
static DATE_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)(^|[^\d])(\d{{1,2}})(?:st|nd|rd|th)?\s+({ENGLISH_MONTHS})\b(?:,?\s+(\d{{4}}))?"
    ))
    .unwrap()
});
static MONTH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"\b({WHOLE_MONTHS})\b")).unwrap());
static MONEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^\w$]|[A-Za-z])(US\$|USD|ZiG|ZIG|ZWG|KSh|Ksh|KES|ZAR|R|\$)\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?\b")
        .unwrap()
});
static PERCENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^\d.,])(\d+)(?:[.,](\d+))?\s?%").unwrap());
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^\d,.])(\+?\d[\d\- ]{5,}\d)").unwrap());
static ORDINAL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)(^|[^\d])(\d+)(?:st|nd|rd|th)\b").unwrap());
static DECIMAL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^\d.,])(\d+)\.(\d+)\b").unwrap());
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^\d,])(\d{1,3}(?:,\d{3})+|\d+)").unwrap());
static ABBREVIATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(Dr\.?|Dkt\.?|etc\.)(\s|$)").unwrap());
/// `No.` is a number's only before one (else it may be the English "no").
static NUMBER_SIGN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:No|Nha)\.\s?(\d)").unwrap());
static DIGITS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+").unwrap());

/// `text` with what a Shona voice would misread put into words.
pub fn normalise(text: &str) -> String {
    let text = replace_all(text, &NUMBER_SIGN, |c| Some(format!("nhamba {}", &c[1])));
    let text = replace_all(&text, &ABBREVIATION, |c| {
        let word = match c[1].trim_end_matches('.') {
            "Dr" | "Dkt" => "Chiremba",
            _ => "nezvimwewo",
        };
        Some(format!("{word}{}", &c[2]))
    });
    let text = replace_all(&text, &DATE_NUMERIC, |c| {
        let (before, day, month, year) = match c.get(2) {
            Some(_) => (&c[1], &c[2], &c[3], &c[4]),
            None => (&c[5], &c[8], &c[7], &c[6]),
        };
        let month: usize = month.parse().ok()?;
        let words = date(
            day.parse().ok()?,
            MONTHS.get(month.checked_sub(1)?)?,
            Some(year),
        )?;
        Some(format!("{before}{words}"))
    });
    let text = replace_all(&text, &DATE_WORDS, |c| {
        let month = month_index(&c[3])?;
        let words = date(
            c[2].parse().ok()?,
            MONTHS[month],
            c.get(4).map(|y| y.as_str()),
        )?;
        Some(format!("{}{words}", &c[1]))
    });
    let text = replace_all(&text, &MONTH, |c| {
        month_index(&c[1]).map(|m| MONTHS[m].to_string())
    });
    let text = replace_all(&text, &TIME_POINT_AMPM, |c| {
        let hour: u64 = c[2].parse().ok()?;
        let minutes: u64 = c[3].parse().ok()?;
        Some(format!(
            "{}{}",
            &c[1],
            time(hour, minutes, Some(&c[4]), false)?
        ))
    });
    let text = replace_all(&text, &TIME, |c| {
        let hour: u64 = c[2].parse().ok()?;
        let minutes: u64 = c[4].parse().ok()?;
        let marked = c[3].eq_ignore_ascii_case("h");
        Some(format!(
            "{}{}",
            &c[1],
            time(hour, minutes, c.get(5).map(|m| m.as_str()), marked)?
        ))
    });
    let text = replace_all(&text, &HOUR_AMPM, |c| {
        let hour: u64 = c[2].parse().ok()?;
        Some(format!("{}{}", &c[1], time(hour, 0, Some(&c[3]), false)?))
    });
    let text = replace_all(&text, &MONEY, money);
    let text = replace_all(&text, &PERCENT, |c| {
        let mut words = number(&c[2])?;
        if let Some(frac) = c.get(3) {
            words = format!("{words} pointi {}", digits(frac.as_str()));
        }
        Some(format!("{}{words} muzana", &c[1]))
    });
    let text = replace_all(&text, &PHONE, phone);
    let text = replace_all(&text, &ORDINAL, |c| {
        Some(format!("{}{}", &c[1], ordinal(c[2].parse().ok()?)?))
    });
    let text = replace_all(&text, &DECIMAL, |c| {
        Some(format!(
            "{}{} pointi {}",
            &c[1],
            number(&c[2])?,
            digits(&c[3])
        ))
    });
    let text = replace_all(&text, &NUMBER, |c| {
        let words = number(&c[2]).unwrap_or_else(|| digits(&c[2]));
        Some(format!("{}{words}", &c[1]))
    });
    // Digits no rule took (`2,5`): one by one rather than lost to the voice.
    replace_all(&text, &DIGITS, |c| Some(digits(&c[0])))
}

/// A number as written (`2,500`, `42`) in words.
fn number(written: &str) -> Option<String> {
    cardinal(written.replace(',', "").parse().ok()?)
}

/// Each digit on its own.
fn digits(written: &str) -> String {
    written
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| digit(b - b'0'))
        .collect::<Vec<_>>()
        .join(" ")
}

fn month_index(name: &str) -> Option<usize> {
    let name = name.to_ascii_lowercase();
    let full = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    full.iter()
        .position(|m| *m == name || (name.len() >= 3 && m.starts_with(&name)))
}

/// Day, month, year: `gumi neshanu Ndira zviuru zviviri nemakumi maviri neshanu`.
fn date(day: u64, month: &str, year: Option<&str>) -> Option<String> {
    if !(1..=31).contains(&day) {
        return None;
    }
    let mut words = format!("{} {month}", cardinal(day)?);
    if let Some(year) = year {
        words.push(' ');
        words.push_str(&number(year)?);
    }
    Some(words)
}

/// The part of the day an hour falls in, on a 24-hour clock.
fn period(hour24: u64) -> &'static str {
    match hour24 {
        5..=11 => "mangwanani",
        12..=16 => "masikati",
        17..=19 => "manheru",
        _ => "usiku",
    }
}

/// `8:30` is `sere nemaminitsi makumi matatu`; a 24-hour time (`14h00`,
/// `17:45`) or one marked am/pm also says the part of the day.
fn time(hour: u64, minutes: u64, ampm: Option<&str>, marked_24h: bool) -> Option<String> {
    let hour24 = match ampm.map(|m| m.to_ascii_lowercase()) {
        Some(_) if hour == 0 || hour > 12 => return None,
        Some(m) if m == "p" => (hour % 12) + 12,
        Some(_) => hour % 12,
        None => hour,
    };
    let say_period = ampm.is_some() || marked_24h || hour == 0 || hour > 12;
    let hour12 = match hour24 % 12 {
        0 => 12,
        h => h,
    };
    let mut words = cardinal(hour12)?;
    if minutes > 0 {
        words.push_str(" nemaminitsi ");
        words.push_str(&cardinal(minutes)?);
    }
    if say_period {
        words.push(' ');
        words.push_str(period(hour24));
    }
    Some(words)
}

/// A count of a class-6 noun (`madhora`, `masendi`): `dhora rimwe`,
/// `madhora mashanu`, `madhora makumi maviri`.
fn count_of(n: u64, one: &str, many: &str) -> String {
    match n {
        1 => format!("{one} rimwe"),
        2..=9 => format!("{many} {}", CLASS6[n as usize]),
        _ => format!(
            "{many} {}",
            cardinal(n).unwrap_or_else(|| digits(&n.to_string()))
        ),
    }
}

fn money(c: &Captures) -> Option<String> {
    // A letter before a symbol is part of a word (`SR5`), except before `$`
    // (`i$10`: "it is $10").
    if c[1].chars().any(char::is_alphabetic) && &c[2] != "$" {
        return None;
    }
    let amount: u64 = c[3].replace(',', "").parse().ok()?;
    // `.5` is fifty cents.
    let cents: u64 = match c.get(4).map(|m| m.as_str()) {
        None => 0,
        Some(d) if d.len() == 1 => d.parse::<u64>().ok()? * 10,
        Some(d) => d.parse().ok()?,
    };
    let symbol = c[2].to_ascii_uppercase();
    let (main, small) = match symbol.as_str() {
        "ZIG" | "ZWG" => (
            format!("zigi {}", cardinal(amount).unwrap_or_else(|| digits(&c[3]))),
            None,
        ),
        "KSH" | "KES" => (count_of(amount, "shiringi", "mashiringi"), None),
        "R" | "ZAR" => (count_of(amount, "randi", "marandi"), None),
        _ => (
            count_of(amount, "dhora", "madhora"),
            Some(("sendi", "masendi")),
        ),
    };
    let mut words = format!("{}{main}", &c[1]);
    if cents > 0 {
        let (one, many) = small.unwrap_or(("sendi", "masendi"));
        words.push_str(" ne");
        words.push_str(&count_of(cents, one, many));
    }
    Some(words)
}

/// Digits in groups, as a phone number is read: `ziro nomwe nomwe piri, …`.
/// Only a run that starts with `0` or `+`, or has nine digits or more, is
/// a phone number; others are left to the number rules.
fn phone(c: &Captures) -> Option<String> {
    let run = c[2].trim();
    let count = run.bytes().filter(u8::is_ascii_digit).count();
    if count < 7 || !(run.starts_with(['0', '+']) || count >= 9) {
        return None;
    }
    let groups: Vec<String> = run
        .split([' ', '-'])
        .filter(|g| !g.is_empty())
        .map(digits)
        .filter(|g| !g.is_empty())
        .collect();
    Some(format!("{}{}", &c[1], groups.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn times() {
        for (written, said) in [
            ("8:30", "sere nemaminitsi makumi matatu"),
            (
                "Tinovhura na8:30.",
                "Tinovhura nasere nemaminitsi makumi matatu.",
            ),
            ("14h00", "piri masikati"),
            ("17:45", "shanu nemaminitsi makumi mana neshanu manheru"),
            ("7:05 am", "nomwe nemaminitsi shanu mangwanani"),
            ("9pm", "pfumbamwe usiku"),
            ("8.30am", "sere nemaminitsi makumi matatu mangwanani"),
            ("2.15 p.m.", "piri nemaminitsi gumi neshanu masikati."),
            ("0:15", "gumi nembiri nemaminitsi gumi neshanu usiku"),
            ("12:00", "gumi nembiri"),
        ] {
            assert_eq!(normalise(written), said, "{written}");
        }
    }

    #[test]
    fn dates_and_months() {
        for (written, said) in [
            (
                "15/01/2025",
                "gumi neshanu Ndira zviuru zviviri nemakumi maviri neshanu",
            ),
            (
                "2024-12-25",
                "makumi maviri neshanu Zvita zviuru zviviri nemakumi maviri neina",
            ),
            ("1 March", "potsi Kurume"),
            (
                "3rd August 2026",
                "tatu Nyamavhuvhu zviuru zviviri nemakumi maviri nenhanhatu",
            ),
            ("in September", "in Gunyana"),
            ("muna October.", "muna Gumiguru."),
            ("15 May", "gumi neshanu Chivabvu"),
            ("May I help you?", "May I help you?"),
            ("Oct", "Oct"),
        ] {
            assert_eq!(normalise(written), said, "{written}");
        }
    }

    #[test]
    fn money() {
        for (written, said) in [
            ("US$5", "madhora mashanu"),
            ("$1", "dhora rimwe"),
            (
                "$25.50",
                "madhora makumi maviri neshanu nemasendi makumi mashanu",
            ),
            ("USD 2,000", "madhora zviuru zviviri"),
            ("ZiG 20", "zigi makumi maviri"),
            ("KSh 300", "mashiringi mazana matatu"),
            ("R50", "marandi makumi mashanu"),
            ("Mari i$10 chete.", "Mari imadhora gumi chete."),
            ("$3.5", "madhora matatu nemasendi makumi mashanu"),
        ] {
            assert_eq!(normalise(written), said, "{written}");
        }
    }

    #[test]
    fn percent_phones_ordinals_decimals_and_abbreviations() {
        for (written, said) in [
            ("50%", "makumi mashanu muzana"),
            ("2.5%", "piri pointi shanu muzana"),
            (
                "0772 123 456",
                "ziro nomwe nomwe piri, potsi piri tatu, ina shanu tanhatu",
            ),
            (
                "+263 24 2701234",
                "piri tanhatu tatu, piri ina, piri nomwe ziro potsi piri tatu ina",
            ),
            ("1st", "yekutanga"),
            ("2nd", "yechipiri"),
            ("3.5", "tatu pointi shanu"),
            ("2,500", "zviuru zviviri nemazana mashanu"),
            ("Dr. Moyo", "Chiremba Moyo"),
            ("No. 7", "nhamba nomwe"),
            ("No. I said no.", "No. I said no."),
            ("2,5", "piri,shanu"),
            (
                "1,000,000,000",
                "potsi ziro ziro ziro ziro ziro ziro ziro ziro ziro",
            ),
            (
                "$2000000000",
                "madhora piri ziro ziro ziro ziro ziro ziro ziro ziro ziro",
            ),
            ("shah 8:30", "shah sere nemaminitsi makumi matatu"),
            ("mazai 12", "mazai gumi nembiri"),
            (
                "1234567890123",
                "potsi piri tatu ina shanu tanhatu nomwe sere pfumbamwe ziro potsi piri tatu",
            ),
        ] {
            assert_eq!(normalise(written), said, "{written}");
        }
    }

    #[test]
    fn words_are_left_alone() {
        let text = "Mhoroi, makadii? Ndingakubatsirai sei nhasi?";
        assert_eq!(normalise(text), text);
    }
}
