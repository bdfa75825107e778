//! Speech synthesis by an OpenAI-compatible server (`{base_url}/audio/speech`),
//! played as it arrives: each piece of the answer's body is decoded (raw
//! PCM or WAV), resampled to the engine's rate and handed on at once, so the
//! caller hears the phrase's start while its end is still being made.
//! Dropping the speech closes the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::pcm::PcmReader;
use crate::audio::ENGINE_RATE;
use crate::codec::resample::StreamResampler;
use crate::config::{RemoteTtsConfig, TtsFormat};
use crate::engine::remote;
use crate::engine::{EngineError, RemoteFailure, Speech, TtsBackend, Voice};

/// OpenAI's limit on one request's text.
const MAX_INPUT_CHARS: usize = 4096;
/// A phrase's audio beyond this is a broken server's: it is cut.
const MAX_PHRASE_SECS: usize = 60;

struct Backend {
    endpoint: remote::Endpoint,
    config: RemoteTtsConfig,
}

pub struct OpenAiTts {
    backend: Arc<Backend>,
}

impl OpenAiTts {
    pub fn new(name: &str, config: &RemoteTtsConfig) -> Result<OpenAiTts, EngineError> {
        Ok(OpenAiTts {
            backend: Arc::new(Backend {
                endpoint: remote::Endpoint::new(
                    "tts",
                    name,
                    &config.base_url,
                    "audio/speech",
                    config.key(),
                    config.connect_timeout_ms,
                )?,
                config: config.clone(),
            }),
        })
    }
}

impl TtsBackend for OpenAiTts {
    fn speak(&self, text: String, _voice: Voice) -> Speech {
        let text: String = text.trim().chars().take(MAX_INPUT_CHARS).collect();
        if text.is_empty() {
            return futures_util::stream::empty().boxed();
        }
        let reading = Reading::new(self.backend.clone(), text);
        futures_util::stream::unfold(reading, |mut r| async move {
            r.next().await.map(|piece| (piece, r))
        })
        .boxed()
    }
}

/// A phrase being read, piece by piece.
struct Reading {
    backend: Arc<Backend>,
    text: Option<String>,
    response: Option<reqwest::Response>,
    reader: PcmReader,
    resampler: Option<StreamResampler>,
    /// Samples read at the server's rate, and handed on at the engine's.
    read: usize,
    handed: usize,
    started: Instant,
    first_audio: bool,
    done: bool,
}

impl Reading {
    fn new(backend: Arc<Backend>, text: String) -> Reading {
        let c = &backend.config;
        let reader = PcmReader::new(c.response_format, c.sample_rate);
        Reading {
            backend,
            text: Some(text),
            response: None,
            reader,
            resampler: None,
            read: 0,
            handed: 0,
            started: Instant::now(),
            first_audio: false,
            done: false,
        }
    }

    fn fail(&mut self, kind: RemoteFailure, detail: impl Into<String>) -> EngineError {
        self.done = true;
        remote::failure(&self.backend.endpoint.name, kind, detail)
    }

    /// How long the next read may take: up to the first-audio deadline,
    /// then the idle limit.
    fn patience(&self) -> Duration {
        let c = &self.backend.config;
        if self.first_audio {
            Duration::from_millis(c.idle_timeout_ms)
        } else {
            Duration::from_millis(c.first_audio_timeout_ms).saturating_sub(self.started.elapsed())
        }
    }

    async fn next(&mut self) -> Option<Result<Vec<f32>, EngineError>> {
        while !self.done {
            match self.read().await {
                Ok(audio) if audio.is_empty() => continue,
                Ok(audio) => return Some(Ok(audio)),
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    /// Reads on; returns what audio is ready (perhaps none).
    async fn read(&mut self) -> Result<Vec<f32>, EngineError> {
        if let Some(text) = self.text.take() {
            self.started = Instant::now();
            let b = &self.backend;
            let c = &b.config;
            let format = match c.response_format {
                TtsFormat::Pcm => "pcm",
                TtsFormat::Wav => "wav",
            };
            let body = json!({
                "model": c.model,
                "input": text,
                "voice": c.voice,
                "response_format": format,
            });
            let request = b.endpoint.post().json(&body);
            let response = match tokio::time::timeout(self.patience(), request.send()).await {
                Err(_) => return Err(self.fail(RemoteFailure::Timeout, "no answer in time")),
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(remote::transport_failure(&self.backend.endpoint.name, &e));
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            if !status.is_success() {
                return Err(self.fail(
                    RemoteFailure::Status(status.as_u16()),
                    status.canonical_reason().unwrap_or("error").to_string(),
                ));
            }
            // Some servers send raw PCM at their voice's own rate and say so.
            if let Some(rate) = response
                .headers()
                .get("x-sample-rate")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|r| (8_000..=48_000).contains(r))
            {
                self.reader.set_rate(rate);
            }
            self.response = Some(response);
            return Ok(Vec::new());
        }
        let patience = self.patience();
        let Some(response) = self.response.as_mut() else {
            self.done = true;
            return Ok(Vec::new());
        };
        let chunk = match tokio::time::timeout(patience, response.chunk()).await {
            Err(_) => {
                let phase = if self.first_audio {
                    "the audio stalled"
                } else {
                    "no audio in time"
                };
                return Err(self.fail(RemoteFailure::Timeout, phase));
            }
            Ok(Err(e)) => {
                self.done = true;
                return Err(remote::transport_failure(&self.backend.endpoint.name, &e));
            }
            Ok(Ok(chunk)) => chunk,
        };
        let Some(bytes) = chunk else {
            self.done = true;
            return self.finish();
        };
        let samples = match self.reader.push(&bytes) {
            Ok(s) => s,
            Err(e) => return Err(self.fail(RemoteFailure::Malformed, e.to_string())),
        };
        self.resample(&samples)
    }

    fn resample(&mut self, samples: &[f32]) -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        if samples.is_empty() {
            return Ok(out);
        }
        let Some(rate) = self.reader.rate() else {
            return Ok(out);
        };
        if self.resampler.is_none() {
            let r = StreamResampler::new(rate, ENGINE_RATE)
                .map_err(|e| self.fail(RemoteFailure::Malformed, e.to_string()))?;
            self.resampler = Some(r);
        }
        self.first_audio = true;
        self.read += samples.len();
        if self.read > MAX_PHRASE_SECS * rate as usize {
            tracing::warn!(backend = %self.backend.endpoint.name, "a phrase longer than {MAX_PHRASE_SECS} s was cut");
            self.done = true;
            return Ok(out);
        }
        if let Some(r) = self.resampler.as_mut()
            && let Err(e) = r.push(samples, &mut out)
        {
            self.done = true;
            return Err(EngineError::Tts(e.to_string()));
        }
        self.handed += out.len();
        Ok(out)
    }

    /// The body ended: what the resampler holds, so the phrase keeps its
    /// length; an answer without audio is malformed.
    fn finish(&mut self) -> Result<Vec<f32>, EngineError> {
        let (Some(r), Some(rate)) = (self.resampler.as_mut(), self.reader.rate()) else {
            return Err(self.fail(RemoteFailure::Malformed, "an answer without audio"));
        };
        let want = (self.read as u64 * ENGINE_RATE as u64).div_ceil(rate as u64) as usize;
        let mut tail = Vec::new();
        let pad = vec![0.0; rate as usize / 100];
        let mut guard = 0;
        while self.handed + tail.len() < want && guard < 64 {
            r.push(&pad, &mut tail)
                .map_err(|e| EngineError::Tts(e.to_string()))?;
            guard += 1;
        }
        tail.truncate(want.saturating_sub(self.handed));
        self.handed += tail.len();
        Ok(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn config(url: &str, extra: &str) -> RemoteTtsConfig {
        toml::from_str(&format!(
            "base_url = \"{url}\"\nmodel = \"tts-1\"\nvoice = \"nova\"\napi_key = \"k2\"\n{extra}"
        ))
        .unwrap()
    }

    /// A server that answers with `head` and then `pieces` of body, `gap`
    /// apart; what it was sent comes back on the channel.
    async fn server(
        head: &'static str,
        pieces: Vec<Vec<u8>>,
        gap: Duration,
    ) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let Some(request) = remote::read_request(&mut conn).await else {
                return;
            };
            let _ = tx.send(request).await;
            let _ = conn.write_all(head.as_bytes()).await;
            for p in pieces {
                tokio::time::sleep(gap).await;
                let chunk = [
                    format!("{:x}\r\n", p.len()).into_bytes(),
                    p,
                    b"\r\n".to_vec(),
                ];
                if conn.write_all(&chunk.concat()).await.is_err() {
                    let _ = tx.send("closed".into()).await;
                    return;
                }
            }
            let _ = conn.write_all(b"0\r\n\r\n").await;
        });
        (url, rx)
    }

    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: audio/pcm\r\ntransfer-encoding: chunked\r\n\r\n";

    /// 100 ms of a 24 kHz tone as 16-bit PCM.
    fn tone_100ms() -> Vec<u8> {
        (0..2_400)
            .flat_map(|i| {
                let s = (0.3 * (i as f32 * 0.05).sin() * 32767.0) as i16;
                s.to_le_bytes()
            })
            .collect()
    }

    #[tokio::test]
    async fn audio_is_handed_on_as_it_arrives_and_keeps_its_length() {
        // Five pieces of 100 ms, 300 ms apart, split at odd bytes.
        let mut body = Vec::new();
        for _ in 0..5 {
            body.extend(tone_100ms());
        }
        let pieces: Vec<Vec<u8>> = body.chunks(4_801).map(<[u8]>::to_vec).collect();
        let (url, mut sent) = server(CHUNKED, pieces, Duration::from_millis(300)).await;
        let tts = OpenAiTts::new("voice", &config(&url, "")).unwrap();
        let started = Instant::now();
        let mut speech = tts.speak(" Your appointment is at nine. ".into(), Voice::default());
        let first = speech.next().await.unwrap().unwrap();
        let first_at = started.elapsed();
        assert!(!first.is_empty());
        let mut total = first.len();
        while let Some(piece) = speech.next().await {
            total += piece.unwrap().len();
        }
        let all_at = started.elapsed();
        // The first piece came before the answer ended (~1.5 s).
        assert!(
            first_at + Duration::from_millis(900) < all_at,
            "first {first_at:?}, all {all_at:?}"
        );
        // 500 ms at 24 kHz is 8000 samples at 16 kHz.
        assert_eq!(total, 8_000);
        let request = sent.recv().await.unwrap();
        assert!(request.starts_with("POST /v1/audio/speech "));
        assert!(request.contains("authorization: Bearer k2"));
        let body: serde_json::Value =
            serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"model": "tts-1", "input": "Your appointment is at nine.",
                   "voice": "nova", "response_format": "pcm"})
        );
    }

    #[tokio::test]
    async fn a_rate_named_by_the_server_is_believed() {
        const HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: audio/pcm\r\nx-sample-rate: 8000\r\ntransfer-encoding: chunked\r\n\r\n";
        let (url, _sent) = server(HEAD, vec![vec![0u8; 1_600]], Duration::ZERO).await;
        let tts = OpenAiTts::new("voice", &config(&url, "")).unwrap();
        let mut speech = tts.speak("Hello.".into(), Voice::default());
        let mut total = 0;
        while let Some(piece) = speech.next().await {
            total += piece.unwrap().len();
        }
        // 100 ms at 8 kHz.
        assert_eq!(total, 1_600);
    }

    #[tokio::test]
    async fn dropping_the_speech_closes_the_request() {
        let pieces = vec![tone_100ms(); 40];
        let (url, mut sent) = server(CHUNKED, pieces, Duration::from_millis(50)).await;
        let tts = OpenAiTts::new("voice", &config(&url, "")).unwrap();
        let mut speech = tts.speak("A long answer.".into(), Voice::default());
        speech.next().await.unwrap().unwrap();
        drop(speech);
        sent.recv().await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(3), sent.recv()).await;
        assert_eq!(closed.unwrap().as_deref(), Some("closed"));
    }

    #[tokio::test]
    async fn failures_are_typed() {
        let kind = |r: Option<Result<Vec<f32>, EngineError>>| match r {
            Some(Err(EngineError::Remote(e))) => e.kind,
            other => panic!("{other:?}"),
        };
        let (url, _sent) = server(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            vec![],
            Duration::ZERO,
        )
        .await;
        let tts = OpenAiTts::new("voice", &config(&url, "")).unwrap();
        assert_eq!(
            kind(tts.speak("Hi.".into(), Voice::default()).next().await),
            RemoteFailure::Status(400)
        );

        // A WAV answer that is MP3.
        let (url, _sent) = server(
            CHUNKED,
            vec![b"ID3\x04\x00\x00\x00\x00\x00\x00\x00\x00".to_vec()],
            Duration::ZERO,
        )
        .await;
        let tts = OpenAiTts::new("voice", &config(&url, "response_format = \"wav\"")).unwrap();
        assert_eq!(
            kind(tts.speak("Hi.".into(), Voice::default()).next().await),
            RemoteFailure::Malformed
        );

        // Nothing but a header.
        let (url, _sent) = server(CHUNKED, vec![], Duration::ZERO).await;
        let tts = OpenAiTts::new("voice", &config(&url, "")).unwrap();
        assert_eq!(
            kind(tts.speak("Hi.".into(), Voice::default()).next().await),
            RemoteFailure::Malformed
        );

        // Too slow to start.
        let (url, _sent) = server(CHUNKED, vec![tone_100ms()], Duration::from_secs(5)).await;
        let tts = OpenAiTts::new("voice", &config(&url, "first_audio_timeout_ms = 300")).unwrap();
        assert_eq!(
            kind(tts.speak("Hi.".into(), Voice::default()).next().await),
            RemoteFailure::Timeout
        );

        // An empty phrase asks nothing.
        let tts = OpenAiTts::new("voice", &config("http://127.0.0.1:9/v1", "")).unwrap();
        assert!(
            tts.speak("  ".into(), Voice::default())
                .next()
                .await
                .is_none()
        );
        assert_eq!(
            kind(tts.speak("Hi.".into(), Voice::default()).next().await),
            RemoteFailure::Connect
        );
    }
}
