//! Speech recognition backends and the clean-up of what they return.

pub mod whisper;

/// Drops what Whisper writes for non-speech ("[BLANK_AUDIO]", "(coughs)", "*music*")
/// and collapses whitespace; an utterance with no words left is empty.
pub fn clean_transcript(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut depth = 0usize;
    let mut in_stars = false;
    for c in raw.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            '*' => in_stars = !in_stars,
            _ if depth == 0 && !in_stars => out.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    if !words.iter().any(|w| w.chars().any(char::is_alphanumeric)) {
        return String::new();
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::clean_transcript;

    #[test]
    fn non_speech_markers_are_dropped() {
        assert_eq!(clean_transcript(" [BLANK_AUDIO]"), "");
        assert_eq!(clean_transcript("(coughing) "), "");
        assert_eq!(clean_transcript(" *music* "), "");
        assert_eq!(clean_transcript(" ..."), "");
        assert_eq!(
            clean_transcript(" What time  does the clinic open? (laughs)"),
            "What time does the clinic open?"
        );
        assert_eq!(clean_transcript("Mhoro, makadini?"), "Mhoro, makadini?");
    }
}
