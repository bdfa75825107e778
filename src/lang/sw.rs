//! Swahili: espeak-ng knows it (voice `sw`) and reads its numbers, times and
//! dates in Swahili itself; the pack says money and percentages the
//! Swahili way (the unit before the amount) and holds the phrases.

use std::sync::LazyLock;

use regex::Regex;

use super::{Pack, Phrases, replace_all};

pub static PACK: Pack = Pack {
    code: "sw",
    name: "Swahili",
    phonemes: "sw",
    phrases: Phrases {
        greeting: "Habari, karibu. Mimi ni Izwi. Nikusaidie vipi leo?",
        filler: "Tafadhali subiri kidogo.",
        goodbye: "Asante kwa kupiga simu. Kwaheri.",
        still_there: "Bado uko hapo?",
        transfer_announcement: "Tafadhali subiri, nakuunganisha na mtu mwingine.",
        transfer_failed: "Samahani, siwezi kukuunganisha sasa hivi.",
        engine_failed: "Samahani, siwezi kujibu sasa hivi. Tafadhali jaribu tena baadaye.",
    },
    asr_hint: "Habari, karibu, asante, daktari, kliniki, hospitali, dawa, miadi, leo, kesho, \
               Jumatatu, Jumamosi, shilingi, Nairobi, Mombasa, Dar es Salaam.",
    normalise,
    g2p: None,
};

static MONEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(KSh|TSh|USh|KES|TZS|UGX|USD|US\$|\$)\s?(\d[\d,]*(?:\.\d+)?)").unwrap()
});
static PERCENT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(\d+(?:[.,]\d+)?)\s?%").unwrap());

fn normalise(text: &str) -> String {
    let text = replace_all(text, &MONEY, |c| {
        let unit = match c[1].to_ascii_uppercase().as_str() {
            "USD" | "US$" | "$" => "dola",
            _ => "shilingi",
        };
        Some(format!("{unit} {}", &c[2]))
    });
    replace_all(&text, &PERCENT, |c| Some(format!("asilimia {}", &c[1])))
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn money_and_percent_put_the_unit_first() {
        assert_eq!(normalise("Ni KSh 2,500 tu."), "Ni shilingi 2,500 tu.");
        assert_eq!(normalise("US$5 au TSh 300"), "dola 5 au shilingi 300");
        assert_eq!(normalise("punguzo la 20%"), "punguzo la asilimia 20");
        assert_eq!(normalise("Saa 8:30"), "Saa 8:30");
    }
}
