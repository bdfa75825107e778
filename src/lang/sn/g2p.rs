//! Shona letter-to-sound rules. Shona spelling is phonemic: each letter or
//! letter group stands for one sound, so reading a word is taking the
//! longest group that matches at each point. The sounds follow the
//! orthography table of Wikipedia's "Shona language" (Phonology and
//! alphabet): `b` is implosive ɓ and `bh` plain b, `d` ɗ and `dh` d, `v` the
//! approximant ʋ and `vh` v, `mh`/`nh` breathy nasals, `sv`/`zv`/`tsv`/`dzv`
//! the whistled sibilants (marked with U+034E), `dy` dʒɡ and `ty` tʃk.
//! Syllables are open, so stress (on the penultimate, as Shona words are
//! heard) goes before the consonants of the second-to-last vowel's syllable.

/// Letter groups and their sounds, longest first where one begins another.
const GRAPHEMES: &[(&str, &str)] = &[
    ("dzv", "dz͎"),
    ("tsv", "ts͎"),
    ("nzv", "nz͎"),
    ("svw", "s͎w"),
    ("zvw", "z͎w"),
    ("mbw", "mbɡ"),
    ("ngw", "ŋɡw"),
    ("n'", "ŋ"),
    ("n’", "ŋ"),
    ("bh", "b"),
    ("bv", "bv"),
    ("bz", "bz͎"),
    ("ch", "tʃ"),
    ("dh", "d"),
    ("dy", "dʒɡ"),
    ("dz", "dz"),
    ("mb", "mb"),
    ("mh", "mʱ"),
    ("nd", "nd"),
    ("ng", "ŋɡ"),
    ("nh", "nʱ"),
    ("ny", "ɲ"),
    ("pf", "pf"),
    ("ps", "ps͎"),
    ("sh", "ʃ"),
    ("sv", "s͎"),
    ("ts", "ts"),
    ("ty", "tʃk"),
    ("vh", "v"),
    ("zh", "ʒ"),
    ("zv", "z͎"),
    ("a", "a"),
    ("b", "ɓ"),
    ("c", "k"),
    ("d", "ɗ"),
    ("e", "e"),
    ("f", "f"),
    ("g", "ɡ"),
    ("h", "h"),
    ("i", "i"),
    ("j", "dʒ"),
    ("k", "k"),
    ("l", "l"),
    ("m", "m"),
    ("n", "n"),
    ("o", "o"),
    ("p", "p"),
    ("q", "k"),
    ("r", "r"),
    ("s", "s"),
    ("t", "t"),
    ("u", "u"),
    ("v", "ʋ"),
    ("w", "w"),
    ("x", "ks"),
    ("y", "j"),
    ("z", "z"),
];

const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];

/// One word's sounds, in IPA, stressed on the penultimate syllable.
pub fn word(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut units: Vec<&str> = Vec::new();
    let mut rest = lower.as_str();
    while !rest.is_empty() {
        match GRAPHEMES.iter().find(|(g, _)| rest.starts_with(g)) {
            Some((g, ipa)) => {
                units.push(ipa);
                rest = &rest[g.len()..];
            }
            // Not a Shona letter (an accent, an apostrophe): skipped.
            None => {
                let skip = rest.chars().next().map_or(1, char::len_utf8);
                rest = &rest[skip..];
            }
        }
    }
    let vowels: Vec<usize> = units
        .iter()
        .enumerate()
        .filter(|(_, u)| VOWELS.contains(u))
        .map(|(i, _)| i)
        .collect();
    // The stressed syllable starts right after the vowel before its own.
    let stress_at = match vowels.len() {
        0 | 1 => None,
        2 => Some(0),
        n => Some(vowels[n - 3] + 1),
    };
    let mut out = String::new();
    for (i, u) in units.iter().enumerate() {
        if Some(i) == stress_at {
            out.push('ˈ');
        }
        out.push_str(u);
    }
    out
}

/// A phrase's sounds: each word read by the rules, spaces and clause
/// punctuation kept (the voice pauses and rises on them).
pub fn phonemes(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut current = String::new();
    let flush = |current: &mut String, out: &mut String| {
        if !current.is_empty() {
            out.push_str(&word(current));
            current.clear();
        }
    };
    for c in text.chars() {
        if c.is_alphabetic() || c == '\'' || c == '’' {
            current.push(c);
        } else {
            flush(&mut current, &mut out);
            if c.is_whitespace() {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            } else if matches!(c, ',' | '.' | '!' | '?' | ';' | ':') {
                out.push(c);
            }
        }
    }
    flush(&mut current, &mut out);
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every letter group in at least one word, with the sounds expected.
    #[test]
    fn sixty_words_cover_every_letter_group() {
        let words: &[(&str, &str)] = &[
            ("baba", "ˈɓaɓa"),
            ("bhazi", "ˈbazi"),
            ("kubva", "ˈkubva"),
            ("chuma", "ˈtʃuma"),
            ("dada", "ˈɗaɗa"),
            ("dhongi", "ˈdoŋɡi"),
            ("kudya", "ˈkudʒɡa"),
            ("dzidza", "ˈdzidza"),
            ("famba", "ˈfamba"),
            ("gara", "ˈɡara"),
            ("hongu", "ˈhoŋɡu"),
            ("hwahwa", "ˈhwahwa"),
            ("juzi", "ˈdʒuzi"),
            ("kumba", "ˈkumba"),
            ("kwana", "ˈkwana"),
            ("mira", "ˈmira"),
            ("imbwa", "ˈimbɡa"),
            ("mhomho", "ˈmʱomʱo"),
            ("mvura", "ˈmʋura"),
            ("pamwe", "ˈpamwe"),
            ("nezuro", "neˈzuro"),
            ("kuenda", "kuˈenda"),
            ("nhanha", "ˈnʱanʱa"),
            ("n'anga", "ˈŋaŋɡa"),
            ("kunwa", "ˈkunwa"),
            ("nyora", "ˈɲora"),
            ("nzvenga", "ˈnz͎eŋɡa"),
            ("pasi", "ˈpasi"),
            ("upfumi", "uˈpfumi"),
            ("pwanya", "ˈpwaɲa"),
            ("rara", "ˈrara"),
            ("sekuru", "seˈkuru"),
            ("shanu", "ˈʃanu"),
            ("svika", "ˈs͎ika"),
            ("tete", "ˈtete"),
            ("tsoka", "ˈtsoka"),
            ("tsvaira", "ts͎aˈira"),
            ("tyora", "ˈtʃkora"),
            ("vudzi", "ˈʋudzi"),
            ("vhiki", "ˈviki"),
            ("aiwa", "aˈiwa"),
            ("uya", "ˈuja"),
            ("zuva", "ˈzuʋa"),
            ("zhizha", "ˈʒiʒa"),
            ("zvino", "ˈz͎ino"),
            ("mangwanani", "maŋɡwaˈnani"),
            ("Zimbabwe", "ziˈmbaɓwe"),
            ("mhoroi", "mʱoˈroi"),
            ("makadii", "makaˈɗii"),
            ("ndatenda", "ndaˈtenda"),
            ("pfumbamwe", "pfuˈmbamwe"),
            ("tanhatu", "taˈnʱatu"),
            ("nyamavhuvhu", "ɲamaˈvuvu"),
            ("chivabvu", "tʃiˈʋabvu"),
            ("dzvinyu", "ˈdz͎iɲu"),
            ("svwe", "s͎we"),
            ("zvwa", "z͎wa"),
            ("psa", "ps͎a"),
            ("bzi", "bz͎i"),
            ("mbudzi", "ˈmbudzi"),
            ("ngoma", "ˈŋɡoma"),
            ("tyamu", "ˈtʃkamu"),
            ("Harare", "haˈrare"),
        ];
        assert!(words.len() >= 60);
        for (w, ipa) in words {
            assert_eq!(word(w), *ipa, "{w}");
        }
        // Every group of the table is used by some word above.
        for (g, _) in GRAPHEMES {
            if ["c", "l", "q", "x", "n’"].contains(g) {
                continue;
            }
            assert!(
                words.iter().any(|(w, _)| w.to_lowercase().contains(g)),
                "no test word has `{g}`"
            );
        }
    }

    #[test]
    fn phrases_keep_spaces_and_clause_marks() {
        assert_eq!(phonemes("Mhoroi, makadii?"), "mʱoˈroi, makaˈɗii?");
        assert_eq!(phonemes("  Zvita  "), "ˈz͎ita");
    }
}
