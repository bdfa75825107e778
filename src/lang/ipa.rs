//! IPA onto the phonemes a voice knows. A Piper voice's `phoneme_id_map`
//! lists nearly every IPA symbol, but a voice trained on one language has
//! only learnt the symbols its language's phonemiser wrote: an English voice
//! fed ɓ or ɲ makes noise. So each symbol the voice does not know is said
//! with the nearest it does:
//!
//! | IPA | on an English voice | why |
//! |---|---|---|
//! | ɓ ɗ ʄ ɠ (implosives: Shona `b` `d`) | b d dʒ ɡ | same place, plain voiced stop |
//! | ʋ β (Shona `v`) | v | labial, voiced |
//! | ɸ | f | labial, voiceless |
//! | ʱ (breathy: Shona `mh` `nh`) | h | the breath heard after the nasal |
//! | ɦ | h | |
//! | ◌͎ (whistled: Shona `sv` `zv` `tsv` `dzv`) | v | the lips' narrowing, heard as v after the sibilant (`sv`, as written) |
//! | ɲ (Shona `ny`, Swahili `ny`) | nj | |
//! | ɟ (Swahili `j`) | dʒ | |
//! | c | tʃ | |
//! | r (trill: Shona `r`, Swahili `r`) | ɾ | English `t` in "water": a tap |
//! | ɣ (Swahili `gh`) | ɡ | |
//! | x | k | when the voice lacks it |
//! | ʲ ʷ ʰ | j w (dropped) | |
//!
//! A symbol with no entry and unknown to the voice is dropped rather than
//! sent as noise.
//!
//! Vowels need a rule of their own. English espeak-ng writes `a`, `e` and `o`
//! only inside diphthongs (aɪ, eɪ, oʊ) and `i`, `u` mostly long, so the pure
//! vowels of Shona and Swahili are said with the English vowels the voice
//! learnt, when the phonemes come from another language's rules:
//!
//! | vowel | on an English voice |
//! |---|---|
//! | a | ɑː (father) |
//! | e | eɪ |
//! | i | iː |
//! | o | oʊ |
//! | u | uː |
//!
//! Measured with Whisper base on four Swahili phrases (espeak-ng `sw`, three
//! syntheses each): character error rate 0.29 with the bare vowels, 0.18-0.21
//! with these.

use std::collections::HashSet;

/// What espeak-ng's `en-us` writes (measured on a corpus covering every
/// English phoneme; a test checks it still holds), with Piper's pause marks.
const ENGLISH: &str = "abdefhijklmnopstuvwxzæðŋɐɑɔəɚɛɜɡɪɹɾʃʊʌʒʔˈˌː\u{329}θᵻ ,.!?;:";

/// Unknown symbol → the sounds said instead (each tried in turn against the voice).
const NEAREST: &[(char, &str)] = &[
    ('ɓ', "b"),
    ('ɗ', "d"),
    ('ʄ', "dʒ"),
    ('ɠ', "ɡ"),
    ('ʋ', "v"),
    ('β', "v"),
    ('ɸ', "f"),
    ('ʱ', "h"),
    ('ɦ', "h"),
    ('\u{34E}', "v"),
    ('ɲ', "nj"),
    ('ɟ', "dʒ"),
    ('c', "tʃ"),
    ('r', "ɾ"),
    ('ɣ', "ɡ"),
    ('x', "k"),
    ('ʲ', "j"),
    ('ʷ', "w"),
    ('ʰ', ""),
    ('ç', "ʃ"),
    ('ʎ', "lj"),
    ('ɨ', "ᵻ"),
    ('ɯ', "u"),
    ('ø', "ɜ"),
    ('œ', "ɛ"),
    ('y', "u"),
    // British English (`en-gb`) on an American voice.
    ('ɒ', "ɑ"),
];

/// Whether an espeak-ng voice name (`en-us`, `en-GB`, `en`) is English.
pub fn english(espeak_voice: &str) -> bool {
    espeak_voice.to_ascii_lowercase().starts_with("en")
}

/// The symbols one voice knows.
#[derive(Debug, Clone)]
pub struct Inventory {
    known: HashSet<char>,
    /// Trained on English phonemes: other languages' vowels are said with English ones.
    english: bool,
}

impl Inventory {
    /// A voice phonemised by espeak-ng voice `espeak_voice`, with
    /// `symbols` in its id map: an English voice knows what espeak-ng's
    /// English writes; any other is taken to know its whole map.
    pub fn of_voice(espeak_voice: &str, symbols: impl IntoIterator<Item = char>) -> Inventory {
        let symbols: HashSet<char> = symbols.into_iter().collect();
        let english = english(espeak_voice);
        let known = if english {
            ENGLISH.chars().filter(|c| symbols.contains(c)).collect()
        } else {
            symbols
        };
        Inventory { known, english }
    }

    /// Another language's `phonemes` (a pack's rules, another espeak-ng
    /// voice) in symbols this voice knows, its pure vowels as the voice's own.
    pub fn fit_foreign(&self, phonemes: &str) -> String {
        if !self.english {
            return self.fit(phonemes);
        }
        let chars: Vec<char> = phonemes.chars().collect();
        let mut out = String::with_capacity(phonemes.len() * 2);
        for (i, &c) in chars.iter().enumerate() {
            let next = chars.get(i + 1).copied();
            // Already English: a diphthong, or a vowel marked long.
            if matches!(next, Some('ɪ' | 'ʊ' | 'ː')) {
                out.push(if c == 'a' && next == Some('ː') {
                    'ɑ'
                } else {
                    c
                });
                continue;
            }
            match c {
                'a' => out.push_str("ɑː"),
                'e' => out.push_str("eɪ"),
                'i' => out.push_str("iː"),
                'o' => out.push_str("oʊ"),
                'u' => out.push_str("uː"),
                _ => out.push(c),
            }
        }
        self.fit(&out)
    }

    pub fn knows(&self, c: char) -> bool {
        self.known.contains(&c)
    }

    /// `phonemes` in symbols this voice knows.
    pub fn fit(&self, phonemes: &str) -> String {
        let mut out = String::with_capacity(phonemes.len());
        for c in phonemes.chars() {
            if self.knows(c) {
                out.push(c);
            } else if let Some((_, instead)) = NEAREST.iter().find(|(from, _)| *from == c) {
                out.extend(instead.chars().filter(|c| self.knows(*c)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn english() -> Inventory {
        // Piper's map has all of these and many more.
        Inventory::of_voice("en-us", ENGLISH.chars().chain("ɓɗɲʋβʱɦrɟ\u{34E}".chars()))
    }

    #[test]
    fn shona_sounds_on_an_english_voice() {
        let v = english();
        assert_eq!(v.fit("mʱoˈroi, makaˈɗii?"), "mhoˈɾoi, makaˈdii?");
        assert_eq!(v.fit("ˈz͎ino"), "ˈzvino");
        assert_eq!(v.fit("ˈɲora"), "ˈnjoɾa");
        assert_eq!(v.fit("ˈɓaɓa ˈʋudzi"), "ˈbaba ˈvudzi");
    }

    #[test]
    fn english_is_untouched_and_other_voices_keep_their_map() {
        let v = english();
        let english = "həlˈoʊ, ðɪs ɪz ˈɪzwi. haʊ kæn aɪ hˈɛlp juː tədˈeɪ?";
        assert_eq!(v.fit(english), english);
        let shona_voice = Inventory::of_voice("sn", "ɓɗaeiou".chars());
        assert_eq!(shona_voice.fit("ɓaɗo"), "ɓaɗo");
    }

    #[test]
    fn foreign_vowels_take_the_english_voice_s_own() {
        let v = english();
        assert_eq!(v.fit_foreign("mʱoˈroi"), "mhoʊˈɾoʊiː");
        assert_eq!(v.fit_foreign("habˈaɾi"), "hɑːbˈɑːɾiː");
        // Vowels already English stay.
        assert_eq!(v.fit_foreign("haʊ ɑː iː"), "haʊ ɑː iː");
        let other = Inventory::of_voice("sw", "abhiɾ".chars());
        assert_eq!(other.fit_foreign("habˈaɾi"), "habaɾi");
    }

    #[test]
    fn unknown_symbols_without_a_neighbour_are_dropped() {
        assert_eq!(english().fit("aǃb"), "ab");
    }

    /// espeak-ng's English still writes only what the table says.
    #[test]
    fn the_english_table_covers_what_espeak_writes() {
        let corpus = "The quick brown fox jumps over the lazy dog. She measures the thin ship's \
            azure vision, bought a few huge toys at church; the judge's pleasure was genuine. \
            Why would they go there now? Our father's car, the bird's nurse, a cure for poor \
            Ruth. Butter, water, little bottle, button, mountain, uh-oh. Sing, singer, think, \
            yellow, usual, beige, loch, menu, hear, air, tour, fire, hour, employer.";
        let out = std::process::Command::new("espeak-ng")
            .args(["-q", "--ipa", "-v", "en-us", corpus])
            .output()
            .expect("espeak-ng runs (scripts/setup.sh installs it)");
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let missing: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && !ENGLISH.contains(*c))
            .collect();
        assert!(missing.is_empty(), "espeak-ng wrote {missing:?}");
    }
}
