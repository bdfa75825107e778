//! End-of-turn detection: whether what the caller said so far is a finished
//! turn (a question asked, a sentence ended) or a pause in the middle of one,
//! judged from the sound of it (words, intonation) rather than silence alone.

pub mod features;
pub mod smart_turn;

use super::EngineError;

pub trait TurnDetector: Send + Sync {
    /// The probability (0 to 1) that the caller's turn is complete, from the
    /// turn's 16 kHz audio up to now. Only its end matters: a detector may
    /// look at the last few seconds only.
    ///
    /// Ask early in a pause (Pipecat asks 200 ms in): the silence at the end
    /// counts as a sign of completion, and after half a second of it Smart
    /// Turn calls nearly any sentence, cut off or not, complete.
    fn complete(&self, audio: &[f32]) -> Result<f32, EngineError>;
}

/// The languages Smart Turn v3 was trained on (its model card lists 23), as
/// Whisper's codes; Norwegian appears under both of its written standards.
const TRAINED_LANGUAGES: &[&str] = &[
    "ar", "bn", "da", "de", "en", "es", "fi", "fr", "hi", "id", "it", "ja", "ko", "mr", "nb", "nl",
    "nn", "no", "pl", "pt", "ru", "tr", "uk", "vi", "zh",
];

/// Whether the detector was trained on `language` (a code such as `en` or
/// `en-US`). On other languages (Shona, or `auto`, which may be anything) its
/// judgement is a guess from intonation alone, so silence should decide.
pub fn knows_language(language: &str) -> bool {
    let primary = language
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    TRAINED_LANGUAGES.contains(&primary.as_str())
}

#[cfg(test)]
mod tests {
    use super::knows_language;

    #[test]
    fn trained_languages_are_known_by_their_primary_code() {
        for known in ["en", "en-US", "EN_gb", "zh", "pt-BR", "no"] {
            assert!(knows_language(known), "{known}");
        }
        for unknown in ["sn", "auto", "", "eng", "sw"] {
            assert!(!knows_language(unknown), "{unknown}");
        }
    }
}
