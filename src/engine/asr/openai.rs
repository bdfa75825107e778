//! Speech recognition by an OpenAI-compatible server
//! (`{base_url}/audio/transcriptions`): faster-whisper servers, vLLM serving
//! Whisper, OpenAI. An utterance goes up as a 16 kHz WAV file with the
//! agent's language and prompt; the transcript comes back as JSON. Dropping
//! the future closes the request.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::clean_transcript;
use crate::audio::ENGINE_RATE;
use crate::config::RemoteAsrConfig;
use crate::engine::remote;
use crate::engine::{AsrBackend, EngineError, Hearing, RemoteFailure};

/// A transcript longer than this is not one caller's turn.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

struct Backend {
    endpoint: remote::Endpoint,
    config: RemoteAsrConfig,
}

pub struct OpenAiAsr {
    backend: Arc<Backend>,
}

impl OpenAiAsr {
    pub fn new(name: &str, config: &RemoteAsrConfig) -> Result<OpenAiAsr, EngineError> {
        Ok(OpenAiAsr {
            backend: Arc::new(Backend {
                endpoint: remote::Endpoint::new(
                    "asr",
                    name,
                    &config.base_url,
                    "audio/transcriptions",
                    config.key(),
                    config.connect_timeout_ms,
                )?,
                config: config.clone(),
            }),
        })
    }
}

impl AsrBackend for OpenAiAsr {
    fn transcribe(
        &self,
        audio: Vec<f32>,
        hearing: &Hearing,
    ) -> BoxFuture<'static, Result<String, EngineError>> {
        let backend = self.backend.clone();
        let hearing = hearing.clone();
        Box::pin(async move {
            let limit = Duration::from_millis(backend.config.timeout_ms);
            match tokio::time::timeout(limit, request(&backend, &audio, &hearing)).await {
                Ok(result) => result,
                Err(_) => Err(remote::failure(
                    &backend.endpoint.name,
                    RemoteFailure::Timeout,
                    "no transcript in time",
                )),
            }
        })
    }
}

async fn request(
    backend: &Backend,
    audio: &[f32],
    hearing: &Hearing,
) -> Result<String, EngineError> {
    let wav = wav(audio).map_err(|e| EngineError::Asr(format!("a WAV upload: {e}")))?;
    let file = reqwest::multipart::Part::bytes(wav)
        .file_name("utterance.wav")
        .mime_str("audio/wav")
        .map_err(|e| EngineError::Asr(e.to_string()))?;
    // `json`, not `text`: every such server knows it.
    let mut form = reqwest::multipart::Form::new()
        .part("file", file)
        .text("model", backend.config.model.clone())
        .text("response_format", "json")
        .text("temperature", "0");
    if hearing.language != "auto" && !hearing.language.is_empty() {
        form = form.text("language", hearing.language.clone());
    }
    if !hearing.prompt.is_empty() {
        form = form.text("prompt", hearing.prompt.clone());
    }
    let mut response = backend
        .endpoint
        .post()
        .multipart(form)
        .send()
        .await
        .map_err(|e| remote::transport_failure(&backend.endpoint.name, &e))?;
    let status = response.status();
    if !status.is_success() {
        // The body may quote the request: not kept.
        return Err(remote::failure(
            &backend.endpoint.name,
            RemoteFailure::Status(status.as_u16()),
            status.canonical_reason().unwrap_or("error").to_string(),
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| remote::transport_failure(&backend.endpoint.name, &e))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return Err(remote::failure(
                &backend.endpoint.name,
                RemoteFailure::Malformed,
                format!("an answer over {MAX_ANSWER_BYTES} bytes"),
            ));
        }
    }
    transcript(&body)
        .map_err(|detail| remote::failure(&backend.endpoint.name, RemoteFailure::Malformed, detail))
}

#[derive(Deserialize)]
struct Answer {
    text: String,
}

/// The words of a JSON answer, cleaned as the embedded recogniser's are.
fn transcript(body: &[u8]) -> Result<String, String> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("not a transcript: {e}"))?;
    Ok(clean_transcript(&answer.text))
}

/// 16-bit mono WAV at the engine's rate: what every server reads.
fn wav(audio: &[f32]) -> Result<Vec<u8>, hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: ENGINE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + audio.len() * 2));
    let mut writer = hound::WavWriter::new(&mut out, spec)?;
    for s in audio {
        writer.write_sample((s.clamp(-1.0, 1.0) * i16::MAX as f32) as i16)?;
    }
    writer.finalize()?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_is_a_16_khz_wav() {
        let audio: Vec<f32> = (0..1600).map(|i| (i as f32 / 100.0).sin() * 0.5).collect();
        let bytes = wav(&audio).unwrap();
        let mut reader = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(reader.spec().sample_rate, 16_000);
        assert_eq!(reader.spec().channels, 1);
        let back: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(back.len(), 1600);
        assert_eq!(back[100], (audio[100] * i16::MAX as f32) as i16);
    }

    #[test]
    fn answers_are_read_and_cleaned() {
        assert_eq!(
            transcript(br#"{"text":" When do you open? (coughs)"}"#).unwrap(),
            "When do you open?"
        );
        assert_eq!(transcript(br#"{"text":" [BLANK_AUDIO]"}"#).unwrap(), "");
        // verbose_json has more fields; the text is what counts.
        assert_eq!(
            transcript(br#"{"task":"transcribe","language":"en","text":"Hi.","segments":[]}"#)
                .unwrap(),
            "Hi."
        );
        assert!(transcript(b"When do you open?").is_err(), "plain text");
        assert!(transcript(br#"{"error":{"message":"x"}}"#).is_err());
    }

    /// A server that answers each request with `answer` (status line and
    /// body) after `delay`, and counts what it was sent.
    async fn server(
        answer: &'static str,
        delay: Duration,
    ) -> (String, tokio::sync::mpsc::Receiver<String>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(request) = remote::read_request(&mut conn).await else {
                        return;
                    };
                    let _ = tx.send(request).await;
                    tokio::time::sleep(delay).await;
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, rx)
    }

    fn config(url: &str, timeout_ms: u64) -> RemoteAsrConfig {
        toml::from_str(&format!(
            "base_url = \"{url}\"\nmodel = \"whisper-1\"\napi_key = \"k1\"\ntimeout_ms = {timeout_ms}\n"
        ))
        .unwrap()
    }

    fn hearing(prompt: &str) -> Hearing {
        Hearing {
            backend: "stt".into(),
            language: "sn".into(),
            prompt: prompt.into(),
        }
    }

    #[tokio::test]
    async fn an_utterance_goes_up_with_its_language_prompt_and_key() {
        let (url, mut sent) = server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 25\r\n\r\n{\"text\":\" Mhoro, ndeipi\"}",
            Duration::ZERO,
        )
        .await;
        let asr = OpenAiAsr::new("stt", &config(&url, 5_000)).unwrap();
        let text = asr
            .transcribe(vec![0.1; 8_000], &hearing("Parirenyatwa"))
            .await
            .unwrap();
        assert_eq!(text, "Mhoro, ndeipi");
        let request = sent.recv().await.unwrap();
        assert!(request.starts_with("POST /v1/audio/transcriptions "));
        assert!(request.contains("authorization: Bearer k1"));
        for (field, value) in [
            ("model", "whisper-1"),
            ("language", "sn"),
            ("prompt", "Parirenyatwa"),
            ("response_format", "json"),
        ] {
            assert!(
                request.contains(&format!("name=\"{field}\"\r\n\r\n{value}\r\n")),
                "{field}"
            );
        }
        assert!(request.contains("filename=\"utterance.wav\""));
        assert!(request.contains("RIFF"));
    }

    #[tokio::test]
    async fn failures_are_typed() {
        let kind = |r: Result<String, EngineError>| match r {
            Err(EngineError::Remote(e)) => e.kind,
            other => panic!("{other:?}"),
        };
        let (url, _sent) = server(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let asr = OpenAiAsr::new("stt", &config(&url, 5_000)).unwrap();
        let r = asr.transcribe(vec![0.0; 1_600], &hearing("")).await;
        assert_eq!(kind(r), RemoteFailure::Status(503));

        let (url, _sent) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            Duration::ZERO,
        )
        .await;
        let asr = OpenAiAsr::new("stt", &config(&url, 5_000)).unwrap();
        let r = asr.transcribe(vec![0.0; 1_600], &hearing("")).await;
        assert_eq!(kind(r), RemoteFailure::Malformed);

        let (url, _sent) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"text\":\"\"}",
            Duration::from_secs(5),
        )
        .await;
        let asr = OpenAiAsr::new("stt", &config(&url, 300)).unwrap();
        let r = asr.transcribe(vec![0.0; 1_600], &hearing("")).await;
        assert_eq!(kind(r), RemoteFailure::Timeout);

        // Nobody listens on port 9 of 127.0.0.1.
        let asr = OpenAiAsr::new("stt", &config("http://127.0.0.1:9/v1", 5_000)).unwrap();
        let r = asr.transcribe(vec![0.0; 1_600], &hearing("")).await;
        assert_eq!(kind(r), RemoteFailure::Connect);
    }
}
