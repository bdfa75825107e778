//! What a user sees when something is wrong: a clear message and a failing exit
//! status, never a panic.

mod common;

use std::process::{Command, Output};

use common::izwi_bin;

fn izwi(args: &[&str], env: &[(&str, &str)]) -> Output {
    let records = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(izwi_bin());
    cmd.args(args)
        .env("IZWI_RECORDS_PATH", records.path().join("records.db"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output) {
    assert!(!o.status.success());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

#[test]
fn a_bad_setting_is_named() {
    let o = izwi(
        &["models", "list"],
        &[("IZWI_TURN_BARGE_IN_MIN_MS", "fast")],
    );
    assert_clean_failure(&o);
    assert!(
        stderr(&o).contains("turn.barge_in_min_ms"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("izwi.toml");
    std::fs::write(&path, "[turn]\nendpoint_silence_ms = [1]\n").unwrap();
    let o = izwi(&["--config", path.to_str().unwrap(), "models", "list"], &[]);
    assert_clean_failure(&o);
    assert!(
        stderr(&o).contains("turn.endpoint_silence_ms"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_missing_onnx_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    izwi::codec::wav::write_mono(&wav, &[0.0; 1600], 16_000).unwrap();
    let o = izwi(
        &[
            "talk",
            "--fast",
            "--in",
            wav.to_str().unwrap(),
            "--out",
            "/dev/null",
        ],
        &[
            ("IZWI_ENGINE_ONNXRUNTIME", "/nonexistent/libonnxruntime.so"),
            ("IZWI_MODELS_PROFILE", "small"),
        ],
    );
    assert_clean_failure(&o);
    assert!(stderr(&o).contains("ONNX Runtime"), "{}", stderr(&o));
}

#[test]
fn a_corrupted_model_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("silero_vad.onnx"), b"not the model").unwrap();
    let no_mirror = dir.path().join("no-mirror");
    let env = [
        ("IZWI_MODELS_DIR", models.to_str().unwrap()),
        ("IZWI_MODELS_PROFILE", "small"),
        ("IZWI_MODEL_MIRROR", no_mirror.to_str().unwrap()),
    ];
    let o = izwi(&["models", "verify"], &env);
    assert_clean_failure(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("MISMATCH"), "{out}");
    assert!(out.contains("MISSING"), "{out}");
    assert!(stderr(&o).contains("izwi models fetch"), "{}", stderr(&o));
}

/// The `quality` profile's models come only from their publishers' URLs:
/// without a network (a namespace of its own, as on a machine offline) the
/// fetch fails at once, naming the file, the URL and the way around it, and
/// keeps nothing half-written.
#[test]
fn the_quality_profile_offline_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let no_mirror = dir.path().join("no-mirror");
    let o = Command::new("unshare")
        .arg("-n")
        .arg(izwi_bin())
        .args(["models", "fetch", "--profile", "quality"])
        .env("IZWI_MODELS_DIR", &models)
        .env("IZWI_MODEL_MIRROR", &no_mirror)
        .output()
        .expect("unshare (util-linux) must be installed");
    assert_clean_failure(&o);
    let err = stderr(&o);
    for needle in [
        "whisper-small",
        "https://huggingface.co/ggerganov/whisper.cpp/resolve/main/ggml-small-q5_1.bin",
        "comes only from the internet",
        "IZWI_MODEL_MIRROR",
    ] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|f| !f.to_string_lossy().contains("ggml-small")),
        "{left:?}"
    );
}

#[test]
fn an_unreadable_caller_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("caller.wav");
    std::fs::write(&bad, b"RIFF....not audio").unwrap();
    let o = izwi(
        &["talk", "--in", bad.to_str().unwrap(), "--out", "/dev/null"],
        &[("IZWI_MODELS_PROFILE", "small")],
    );
    assert_clean_failure(&o);
    assert!(stderr(&o).contains("caller.wav"), "{}", stderr(&o));
}
