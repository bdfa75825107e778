//! Languages as packs. A pack holds what Izwi must know of a language beyond
//! Whisper's code for it: how its written numbers, times, dates and money
//! are said (normalisation before the voice), how its words are turned into
//! phonemes for the embedded voice (espeak-ng where espeak-ng knows the
//! language, Izwi's own letter-to-sound rules where it does not), the fixed
//! phrases an agent says in it, and words that bias the recogniser towards
//! it. An agent's `language` picks its pack; every agent setting the pack
//! fills can still be set by the agent.

pub mod en;
pub mod ipa;
pub mod sn;
pub mod sw;

/// What an agent says on its own, whatever the model says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phrases {
    pub greeting: &'static str,
    /// While a slow tool runs.
    pub filler: &'static str,
    pub goodbye: &'static str,
    /// When the caller has said nothing for a while.
    pub still_there: &'static str,
    pub transfer_announcement: &'static str,
    pub transfer_failed: &'static str,
    /// When an engine (recogniser, model, voice) fails and the call goes on.
    pub engine_failed: &'static str,
}

#[derive(Debug)]
pub struct Pack {
    /// Whisper's code for the language (`en`, `sn`, `sw`).
    pub code: &'static str,
    pub name: &'static str,
    /// How the embedded voice reads the words: an espeak-ng voice, or
    /// [`RULES_PREFIX`] and the code of a pack with rules of its own.
    pub phonemes: &'static str,
    pub phrases: Phrases,
    /// Common words of the language (and of the places its speakers call
    /// from), given to the recogniser as its prompt when the agent has none.
    pub asr_hint: &'static str,
    /// Written forms the voice would misread, in words.
    pub normalise: fn(&str) -> String,
    /// Words to phonemes, for packs whose language espeak-ng does not know.
    pub g2p: Option<fn(&str) -> String>,
}

/// The `phonemes` value naming a pack's own letter-to-sound rules:
/// `izwi:sn` is Shona read by Izwi's rules.
pub const RULES_PREFIX: &str = "izwi:";

pub const PACKS: &[&Pack] = &[&en::PACK, &sn::PACK, &sw::PACK];

/// The pack of `language` (`sn`, `sn-ZW`, `SW`), if Izwi has one.
pub fn pack(language: &str) -> Option<&'static Pack> {
    let primary = language
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    PACKS.iter().copied().find(|p| p.code == primary)
}

/// The pack of `language`, or English's for a language without one (its
/// phrases are the fallback a configuration can override).
pub fn pack_or_english(language: &str) -> &'static Pack {
    pack(language).unwrap_or(&en::PACK)
}

/// `text` as the voice should read it in `language`: numbers, times, dates,
/// money and abbreviations in words (unchanged for a language with no pack).
pub fn speakable(language: &str, text: &str) -> String {
    match pack(language) {
        Some(p) => (p.normalise)(text),
        None => text.to_string(),
    }
}

/// The letter-to-sound rules a `phonemes` value names (`izwi:sn`), if any.
pub fn rules(phonemes: &str) -> Option<fn(&str) -> String> {
    let code = phonemes.strip_prefix(RULES_PREFIX)?;
    pack(code)?.g2p
}

/// Every rules name Izwi has (`izwi:sn`), for messages.
pub fn rules_names() -> String {
    PACKS
        .iter()
        .filter(|p| p.g2p.is_some())
        .map(|p| format!("{RULES_PREFIX}{}", p.code))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a `phonemes` value names rules Izwi has: `None` when it is not
/// a rules name (an espeak-ng voice then), `Some(false)` when it names
/// rules that do not exist.
pub fn rules_known(phonemes: &str) -> Option<bool> {
    phonemes
        .starts_with(RULES_PREFIX)
        .then(|| rules(phonemes).is_some())
}

/// Replaces every `pattern` match in `text` by what `say` makes of it.
pub(crate) fn replace_all(
    text: &str,
    pattern: &regex::Regex,
    say: impl Fn(&regex::Captures) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut last = 0;
    for caps in pattern.captures_iter(text) {
        let m = caps.get(0).expect("a match has group 0");
        if let Some(words) = say(&caps) {
            out.push_str(&text[last..m.start()]);
            out.push_str(&words);
            last = m.end();
        }
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_are_found_by_their_primary_code() {
        assert_eq!(pack("sn").unwrap().name, "Shona");
        assert_eq!(pack("SN-zw").unwrap().code, "sn");
        assert_eq!(pack("sw_KE").unwrap().code, "sw");
        assert!(pack("zu").is_none());
        assert_eq!(pack_or_english("zu").code, "en");
    }

    #[test]
    fn rules_are_named_by_their_pack() {
        assert!(rules("izwi:sn").is_some());
        assert!(rules("izwi:sw").is_none(), "espeak-ng reads Swahili");
        assert!(rules("sw").is_none());
        assert_eq!(rules_known("izwi:xx"), Some(false));
        assert_eq!(rules_known("izwi:sn"), Some(true));
        assert_eq!(rules_known("en-us"), None);
    }

    #[test]
    fn every_pack_has_every_phrase() {
        for p in PACKS {
            let f = p.phrases;
            for (what, text) in [
                ("greeting", f.greeting),
                ("filler", f.filler),
                ("goodbye", f.goodbye),
                ("still_there", f.still_there),
                ("transfer_announcement", f.transfer_announcement),
                ("transfer_failed", f.transfer_failed),
                ("engine_failed", f.engine_failed),
            ] {
                assert!(!text.trim().is_empty(), "{} lacks {what}", p.code);
            }
            assert!(rules_known(p.phonemes) != Some(false), "{}", p.code);
        }
    }

    #[test]
    fn text_without_a_pack_is_left_alone() {
        assert_eq!(speakable("zu", "8:30"), "8:30");
    }
}
