//! Speech recognition backends (the embedded Whisper, OpenAI-compatible
//! servers), chosen per agent by name, and the clean-up of what they return.

pub mod local;
pub mod openai;
pub mod whisper;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::RemoteAsrConfig;
use crate::engine::{AsrBackend, EngineError, Hearing};

/// Every configured backend by name, `local` among them.
pub fn backends(
    local: Arc<dyn AsrBackend>,
    remotes: &BTreeMap<String, RemoteAsrConfig>,
) -> Result<BTreeMap<String, Arc<dyn AsrBackend>>, EngineError> {
    crate::engine::backends(
        local,
        remotes,
        |name, config| {
            Ok((
                Arc::new(openai::OpenAiAsr::new(name, config)?) as Arc<dyn AsrBackend>,
                config.fallback,
            ))
        },
        |primary, fallback, name| {
            Arc::new(Fallback {
                primary,
                fallback,
                name,
            })
        },
    )
}

/// A server whose failures the embedded recogniser makes up for: the same
/// audio is transcribed here instead.
pub struct Fallback {
    pub primary: Arc<dyn AsrBackend>,
    pub fallback: Arc<dyn AsrBackend>,
    /// The primary's name, for the log.
    pub name: String,
}

impl AsrBackend for Fallback {
    fn transcribe(
        &self,
        audio: Vec<f32>,
        hearing: &Hearing,
    ) -> BoxFuture<'static, Result<String, EngineError>> {
        let primary = self.primary.transcribe(audio.clone(), hearing);
        let fallback = self.fallback.clone();
        let name = self.name.clone();
        let hearing = hearing.clone();
        Box::pin(async move {
            match primary.await {
                Ok(text) => Ok(text),
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e, "speech recognition failed; the embedded model transcribes this turn");
                    fallback.transcribe(audio, &hearing).await
                }
            }
        })
    }
}

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

/// A transcript that is one phrase said over and over ("How much is it? How
/// much is it? How much") is a decoder loop, not the caller: one round is
/// kept. A caller repeats too ("no, no", a number's "five five five", "see
/// you soon, see you soon", digits read in groups "4, 5, 4, 5, 4"), so it
/// takes two rounds of a phrase of two words or more and the start of a
/// third (where the token limit cut the loop), three rounds when the phrase
/// is only numbers, or six rounds of one word.
pub fn collapse_loop(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key = |w: &str| {
        w.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let keys: Vec<String> = words.iter().map(|w| key(w)).collect();
    // One word said again and again is a phrase of one word, whatever the period.
    let one_word = keys.iter().all(|k| Some(k) == keys.first());
    for period in 1..=words.len() / 2 {
        let numbers = keys[..period]
            .iter()
            .all(|k| k.chars().all(|c| c.is_ascii_digit()));
        let enough = if period == 1 || one_word {
            words.len() >= 6
        } else if numbers {
            words.len() >= 3 * period
        } else {
            words.len() > 2 * period
        };
        if enough && (period..keys.len()).all(|i| keys[i] == keys[i % period]) {
            return words[..period].join(" ");
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::{clean_transcript, collapse_loop};

    #[test]
    fn a_decoder_loop_keeps_one_round() {
        assert_eq!(
            collapse_loop(
                "How much does it cost? How much does it cost? How much does it cost? How"
            ),
            "How much does it cost?"
        );
        assert_eq!(
            collapse_loop("Hello? Hello? Hello? Hello? Hello? Hello? Hello"),
            "Hello?"
        );
        // Two rounds and the start of a third (Whisper tiny on espeak-ng).
        assert_eq!(
            collapse_loop(
                "Where can I park when I come to my clinic? Where can I park when I come to my clinic? Where can I park when I"
            ),
            "Where can I park when I come to my clinic?"
        );
        // What a caller may well say twice or a few times stays.
        assert_eq!(collapse_loop("no, no"), "no, no");
        assert_eq!(collapse_loop("five five five five"), "five five five five");
        assert_eq!(collapse_loop("no no no no no"), "no no no no no");
        assert_eq!(collapse_loop("4, 5, 4, 5, 4"), "4, 5, 4, 5, 4");
        assert_eq!(
            collapse_loop("see you soon, see you soon"),
            "see you soon, see you soon"
        );
        assert_eq!(
            collapse_loop("I need a doctor. I need a doctor."),
            "I need a doctor. I need a doctor."
        );
        assert_eq!(collapse_loop("yes"), "yes");
        assert_eq!(collapse_loop(""), "");
        // Words that only start alike are not a loop.
        assert_eq!(
            collapse_loop("the clinic the clinic the clinic opens"),
            "the clinic the clinic the clinic opens"
        );
    }

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
