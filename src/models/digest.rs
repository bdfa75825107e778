//! Hashing while copying, so a download or copy is verified without reading it twice.

use std::io::{Read, Write};

use sha1::Sha1;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
}

/// Copies `from` into `to` (if any), hashing every byte; `progress` sees byte counts.
pub fn copy_hashing(
    from: &mut dyn Read,
    mut to: Option<&mut dyn Write>,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Digests> {
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha256.update(&buf[..n]);
        sha1.update(&buf[..n]);
        if let Some(w) = to.as_mut() {
            w.write_all(&buf[..n])?;
        }
        size += n as u64;
        progress(n as u64);
    }
    if let Some(w) = to.as_mut() {
        w.flush()?;
    }
    Ok(Digests {
        size,
        sha256: hex::encode(sha256.finalize()),
        sha1: hex::encode(sha1.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let mut out = Vec::new();
        let d = copy_hashing(&mut &b"abc"[..], Some(&mut out), &mut |_| {}).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(d.size, 3);
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.sha1, "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
