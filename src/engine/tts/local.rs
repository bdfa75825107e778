//! The embedded voices as a backend: a phrase is made whole on the engine
//! pool's slots and comes as one piece, resampled to the engine's rate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;

use crate::engine::{EngineError, EnginePool, Speech, Tts, TtsBackend, Voice};

/// Loads the voice of that name, verified against the manifest.
pub type LoadVoice = Box<dyn Fn(&str) -> Result<Arc<dyn Tts>, EngineError> + Send + Sync>;

/// The profile's voice and every other one an agent names, each loaded
/// once, when first named, and shared from then on.
pub struct Voices {
    default_name: String,
    loaded: Mutex<BTreeMap<String, Arc<dyn Tts>>>,
    /// Held while a voice loads (outside `loaded`, so that phrases in voices
    /// already loaded go on meanwhile), so that two agents naming a new
    /// voice load it once.
    loading: Mutex<()>,
    load: LoadVoice,
}

impl Voices {
    pub fn new(default_name: String, default: Arc<dyn Tts>, load: LoadVoice) -> Voices {
        Voices {
            loaded: Mutex::new([(default_name.clone(), default)].into()),
            loading: Mutex::new(()),
            default_name,
            load,
        }
    }

    /// The voice named `name` (`None`: the profile's), loading it on first
    /// use. Blocking: call it where a model may be loaded.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<dyn Tts>, EngineError> {
        let name = name.unwrap_or(&self.default_name);
        let find = || {
            self.loaded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(name)
                .cloned()
        };
        if let Some(voice) = find() {
            return Ok(voice);
        }
        let _loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(voice) = find() {
            return Ok(voice);
        }
        let voice =
            (self.load)(name).map_err(|e| EngineError::Tts(format!("voice `{name}`: {e}")))?;
        tracing::info!(voice = name, "voice loaded");
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), voice.clone());
        Ok(voice)
    }

    /// The names of the voices loaded so far.
    pub fn loaded(&self) -> Vec<String> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

pub struct OnPool {
    pub voices: Arc<Voices>,
    pub pool: EnginePool,
    pub threads: usize,
}

impl TtsBackend for OnPool {
    fn speak(&self, text: String, voice: Voice) -> Speech {
        let voices = self.voices.clone();
        let pool = self.pool.clone();
        let threads = self.threads;
        futures_util::stream::once(async move {
            pool.run(threads, move || {
                let tts = voices.get(voice.name.as_deref())?;
                let raw = tts.synthesize(&text, voice.phonemes.as_deref())?;
                crate::codec::resample::resample(&raw, tts.sample_rate(), crate::audio::ENGINE_RATE)
                    .map_err(|e| EngineError::Tts(e.to_string()))
            })
            .await?
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Rate(u32);

    impl Tts for Rate {
        fn sample_rate(&self) -> u32 {
            self.0
        }
        fn synthesize(&self, _: &str, _: Option<&str>) -> Result<Vec<f32>, EngineError> {
            Ok(vec![0.0; self.0 as usize / 10])
        }
    }

    fn voices(loads: Arc<AtomicUsize>) -> Voices {
        Voices::new(
            "joe".into(),
            Arc::new(Rate(16_000)),
            Box::new(move |name| {
                loads.fetch_add(1, Ordering::SeqCst);
                match name {
                    "slow" => Ok(Arc::new(Rate(8_000)) as Arc<dyn Tts>),
                    _ => Err(EngineError::Tts(format!("no voice `{name}`"))),
                }
            }),
        )
    }

    #[test]
    fn a_voice_is_loaded_once_when_first_named() {
        let loads = Arc::new(AtomicUsize::new(0));
        let v = voices(loads.clone());
        assert_eq!(v.get(None).unwrap().sample_rate(), 16_000);
        assert_eq!(v.get(Some("joe")).unwrap().sample_rate(), 16_000);
        assert_eq!(loads.load(Ordering::SeqCst), 0);
        assert_eq!(v.get(Some("slow")).unwrap().sample_rate(), 8_000);
        assert_eq!(v.get(Some("slow")).unwrap().sample_rate(), 8_000);
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(v.loaded(), vec!["joe".to_string(), "slow".to_string()]);
    }

    #[test]
    fn an_unknown_voice_is_named_and_not_kept() {
        let loads = Arc::new(AtomicUsize::new(0));
        let v = voices(loads.clone());
        let err = v.get(Some("zulu")).err().unwrap().to_string();
        assert!(err.contains("voice `zulu`"), "{err}");
        assert!(v.get(Some("zulu")).is_err());
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert_eq!(v.loaded(), vec!["joe".to_string()]);
    }

    #[tokio::test]
    async fn each_phrase_is_said_in_the_named_voice_at_the_engine_rate() {
        let backend = OnPool {
            voices: Arc::new(voices(Arc::new(AtomicUsize::new(0)))),
            pool: EnginePool::new(1),
            threads: 1,
        };
        let say = |name: Option<&str>| {
            backend.speak(
                "hi".into(),
                Voice {
                    name: name.map(String::from),
                    phonemes: None,
                },
            )
        };
        // 100 ms each, whatever the voice's own rate.
        let joe: Vec<_> = say(None).collect().await;
        let slow: Vec<_> = say(Some("slow")).collect().await;
        assert_eq!(joe[0].as_ref().unwrap().len(), 1_600);
        assert_eq!(slow[0].as_ref().unwrap().len(), 1_600);
        let err: Vec<_> = say(Some("zulu")).collect().await;
        assert!(err[0].is_err());
    }
}
