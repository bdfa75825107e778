//! Piper VITS voices (ONNX): IPA phonemes, from espeak-ng or from a language
//! pack's own rules, are fitted to the sounds the voice knows, mapped to its
//! phoneme ids and synthesized in one run per phrase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use super::espeak::Espeak;
use crate::engine::{EngineError, Tts, onnx};
use crate::lang::{self, ipa::Inventory};

#[derive(Debug, Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    inference: InferenceConfig,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(Debug, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Debug, Deserialize)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

pub struct PiperTts {
    session: Mutex<Session>,
    ids: HashMap<char, Vec<i64>>,
    pad: Vec<i64>,
    bos: Vec<i64>,
    eos: Vec<i64>,
    scales: [f32; 3],
    sample_rate: u32,
    voice: String,
    espeak: Espeak,
    inventory: Inventory,
}

impl PiperTts {
    pub fn load(
        model: &Path,
        config: &Path,
        threads: usize,
        espeak: PathBuf,
    ) -> Result<PiperTts, EngineError> {
        let text = std::fs::read_to_string(config)
            .map_err(|e| EngineError::Tts(format!("{}: {e}", config.display())))?;
        let cfg: VoiceConfig = serde_json::from_str(&text).map_err(|e| {
            EngineError::Tts(format!(
                "{} is not a Piper voice config: {e}",
                config.display()
            ))
        })?;
        let inventory = Inventory::of_voice(
            &cfg.espeak.voice,
            cfg.phoneme_id_map.keys().filter_map(|k| {
                let mut chars = k.chars();
                chars.next().filter(|_| chars.next().is_none())
            }),
        );
        let mut ids = HashMap::new();
        for (k, v) in &cfg.phoneme_id_map {
            let mut chars = k.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                ids.insert(c, v.clone());
            }
        }
        let get = |c: char| {
            ids.get(&c)
                .cloned()
                .ok_or_else(|| EngineError::Tts(format!("voice config lacks the `{c}` symbol")))
        };
        let (pad, bos, eos) = (get('_')?, get('^')?, get('$')?);
        let session = onnx::sessions(model, threads, 1, EngineError::Tts)?
            .pop()
            .ok_or_else(|| EngineError::Tts("no session".into()))?;
        let espeak = Espeak::new(espeak);
        espeak.check(&cfg.espeak.voice)?;
        Ok(PiperTts {
            session,
            ids,
            pad,
            bos,
            eos,
            scales: [
                cfg.inference.noise_scale,
                cfg.inference.length_scale,
                cfg.inference.noise_w,
            ],
            sample_rate: cfg.audio.sample_rate,
            voice: cfg.espeak.voice,
            espeak,
            inventory,
        })
    }

    /// What the voice is given for `text`: its phonemes by `phonemes` (an
    /// espeak-ng voice, or a pack's rules such as `izwi:sn`; `None`: the
    /// voice's own espeak-ng voice), fitted to the sounds the voice knows.
    pub fn phonemes(&self, text: &str, phonemes: Option<&str>) -> Result<String, EngineError> {
        let by = phonemes.unwrap_or(&self.voice);
        let ipa = match lang::rules(by) {
            Some(rules) => rules(text),
            None if by.starts_with(lang::RULES_PREFIX) => {
                return Err(EngineError::Tts(format!(
                    "no letter-to-sound rules `{by}` (Izwi has them for: {})",
                    lang::rules_names()
                )));
            }
            None => self.espeak.phonemize(text, by)?,
        };
        // The voice's own language (any English for an English voice) is
        // read as espeak-ng writes it; another's vowels are fitted too.
        let native =
            by == self.voice || (lang::ipa::english(by) && lang::ipa::english(&self.voice));
        Ok(if native {
            self.inventory.fit(&ipa)
        } else {
            self.inventory.fit_foreign(&ipa)
        })
    }

    /// Piper's id layout: BOS, then every phoneme followed by PAD, then EOS.
    fn phoneme_ids(&self, phonemes: &str) -> Vec<i64> {
        let mut out = Vec::with_capacity(phonemes.len() * 2 + 4);
        out.extend(&self.bos);
        out.extend(&self.pad);
        for c in phonemes.chars() {
            if let Some(id) = self.ids.get(&c) {
                out.extend(id);
                out.extend(&self.pad);
            }
        }
        out.extend(&self.eos);
        out
    }
}

impl Tts for PiperTts {
    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn synthesize(&self, text: &str, voice: Option<&str>) -> Result<Vec<f32>, EngineError> {
        let phonemes = self.phonemes(text, voice)?;
        self.synthesize_phonemes(&phonemes)
    }
}

impl PiperTts {
    /// Speech for phonemes the voice knows (as [`PiperTts::phonemes`] gives them).
    pub fn synthesize_phonemes(&self, phonemes: &str) -> Result<Vec<f32>, EngineError> {
        let ids = self.phoneme_ids(phonemes);
        // BOS, PAD, EOS alone: nothing to say.
        if ids.len() <= self.bos.len() + self.pad.len() + self.eos.len() {
            return Ok(Vec::new());
        }
        let err = |e: ort::Error| EngineError::Tts(e.to_string());
        let n = ids.len();
        let input = Tensor::from_array(([1usize, n], ids)).map_err(err)?;
        let lengths = Tensor::from_array(([1usize], vec![n as i64])).map_err(err)?;
        let scales = Tensor::from_array(([3usize], self.scales.to_vec())).map_err(err)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs!["input" => input, "input_lengths" => lengths, "scales" => scales])
            .map_err(err)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        Ok(audio.to_vec())
    }
}
