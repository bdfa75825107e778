//! A temporary PostgreSQL cluster from Debian's `postgresql` (`make test`
//! installs it): initdb in a temporary folder, the server on 127.0.0.1 and a
//! free port, trust authentication for its one user, stopped and removed
//! when dropped. As root, the server runs as the `postgres` user (it refuses
//! root).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::sip_peer::free_tcp_port;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// The newest server's programs under /usr/lib/postgresql/<version>/bin.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: run `make test` (scripts/setup.sh installs postgresql)"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the cluster's folder to postgres failed");
        }
        let pg = Postgres {
            dir,
            bin,
            port: free_tcp_port(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "izwi",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            pg.port,
            pg.dir.path().display()
        );
        let log = format!("{}/server.log", pg.dir.path().display());
        // Not through pipes: the server would hold them open, and reading
        // them to their end would wait for it to stop.
        let started = pg
            .command("pg_ctl")
            .args([
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(started.success(), "pg_ctl start failed:\n{}", pg.log());
        pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "izwi",
                "izwi",
            ],
        );
        pg
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    /// One of the server's programs, as the user that owns the cluster.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    pub fn url(&self) -> String {
        format!("postgres://izwi@127.0.0.1:{}/izwi", self.port)
    }

    /// `izwi calls list --json` on this database (its callers hashed with
    /// `caller_key`): every call's row.
    pub fn calls(&self, caller_key: &str) -> Vec<serde_json::Value> {
        let out = Command::new(super::izwi_bin())
            .env("IZWI_RECORDS_URL", self.url())
            .env("IZWI_RECORDS_CALLER_KEY", caller_key)
            .args(["calls", "list", "--json", "--limit", "500"])
            .output()
            .unwrap();
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        list["calls"]
            .as_array()
            .or(list.as_array())
            .cloned()
            .unwrap_or_else(|| panic!("no calls in {list}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A query's rows, by psql (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let out = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "izwi",
                "-d",
                "izwi",
                "-At",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
