//! English: espeak-ng reads its numbers, times and money itself, so the
//! pack only holds the phrases.

use super::{Pack, Phrases};

pub static PACK: Pack = Pack {
    code: "en",
    name: "English",
    phonemes: "en-us",
    phrases: Phrases {
        greeting: "Hello, this is Izwi. How can I help you today?",
        filler: "One moment, please.",
        goodbye: "Thank you for calling. Goodbye.",
        still_there: "Are you still there?",
        transfer_announcement: "Please hold while I transfer your call.",
        transfer_failed: "I am sorry, I cannot transfer your call right now.",
        engine_failed: "I am sorry, I cannot answer that right now. Please try again in a moment.",
    },
    asr_hint: "",
    normalise: str::to_string,
    g2p: None,
};
