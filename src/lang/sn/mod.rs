//! Shona (chiShona), the language Izwi was first made for. espeak-ng has no
//! Shona, so the pack reads it with its own rules ([`g2p`]) and says its
//! numbers, times, dates and money with its own tables ([`numbers`], [`text`]).

pub mod g2p;
pub mod numbers;
pub mod text;

use super::{Pack, Phrases};

pub static PACK: Pack = Pack {
    code: "sn",
    name: "Shona",
    phonemes: "izwi:sn",
    phrases: Phrases {
        greeting: "Mhoroi, ndinonzi Izwi. Ndingakubatsirai nei nhasi?",
        filler: "Mirai zvishoma, ndapota.",
        goodbye: "Tatenda nekufona. Chisarai zvakanaka.",
        still_there: "Muchiripo here?",
        transfer_announcement: "Mirai zvishoma, ndiri kukuendesai kune mumwe munhu.",
        transfer_failed: "Ndine urombo, handikwanise kukuendesai izvozvi.",
        engine_failed: "Ndine urombo, handikwanise kupindura izvozvi. Edzai zvakare gare gare.",
    },
    asr_hint: "Mhoroi, makadii, ndatenda, ndapota, hongu, aiwa, kiriniki, chiremba, mushonga, \
               nhasi, mangwana, svondo, Muvhuro, Harare, Bulawayo, Mutare, Gweru, Masvingo, Chitungwiza.",
    normalise: text::normalise,
    g2p: Some(g2p::phonemes),
};
