//! Test support: a real optimd on a free loopback port, and the environment
//! CTest provides.
#![allow(dead_code)]

pub mod json;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// An environment variable CTest sets (tests/CMakeLists.txt,
/// OPTIMD_TEST_ENV). Missing means the test was not started by CTest; that
/// fails the test rather than skipping it, so a broken setup cannot pass.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set. These tests run the real daemon: run them with \
             `ctest -R rust_client` from a build tree, or export OPTIMD_BIN, OPTIMD_PLUGIN_DIR \
             and OPTIMD_SOURCE_DIR yourself"
        ),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory unique to this process and call.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("optimd-rs-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `$OPTIMD_BIN --listen tcp://127.0.0.1:0 ...`; `url` is the address it
/// bound. `stop` sends SIGTERM and asserts a clean exit.
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Daemon {
        Daemon::start_listen("tcp://127.0.0.1:0", extra)
    }

    /// Listening first on `listen` (the ready file names the first address).
    pub fn start_listen(listen: &str, extra: &[&str]) -> Daemon {
        let dir = scratch_dir("daemon");
        let ready = dir.join("ready");
        let log = fs::File::create(dir.join("optimd.log")).expect("log file");
        let child = Command::new(env("OPTIMD_BIN"))
            .args(["--listen", listen, "--plugin-dir", &env("OPTIMD_PLUGIN_DIR")])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn $OPTIMD_BIN");
        let mut d = Daemon { child: Some(child), dir, url: String::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(s) = fs::read_to_string(&ready) {
                let url = s.lines().next().unwrap_or("").trim().to_owned();
                if !url.is_empty() {
                    d.url = url;
                    return d;
                }
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("optimd exited during start-up ({status}):\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("optimd not ready after 60 s:\n{}", d.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("optimd.log")).unwrap_or_default()
    }

    /// Waits up to `timeout` for the daemon to exit by itself (after a
    /// `shutdown`): its status, or None while it still runs. `stop` then
    /// finds it gone, signals nothing and checks that status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait, and assert exit status 0 (sanitizer builds report
    /// leaks and errors through it).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        // A daemon already reaped (wait_exit) has no pid left to signal.
        if child.try_wait().expect("try_wait").is_none() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "optimd exited with {status}; its log:\n{}", self.log());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that panicked before stop(): do not leave the daemon behind.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Throw-away certificates made with openssl in a scratch directory: a CA
/// (`ca.pem`), a server certificate for 127.0.0.1 and localhost
/// (`server.pem`/`.key`), a client certificate from the CA
/// (`client.pem`/`.key`), and one from another CA (`rogue.pem`/`.key`,
/// `rogue_ca.pem`).
pub fn make_pki() -> PathBuf {
    let dir = scratch_dir("pki");
    let p = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_owned();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "rogue_ca"] {
        let (key, pem, subj) = (p(&format!("{ca}.key")), p(&format!("{ca}.pem")), format!("/CN=optimd rust test {ca}"));
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        openssl(&args);
    }
    fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("san.cnf");
    // An extension makes openssl write an X.509 v3 certificate, which
    // webpki requires of client certificates too (it refuses v1).
    fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").expect("client.cnf");
    for (name, ca, cn) in [("server", "ca", "localhost"), ("client", "ca", "client"), ("rogue", "rogue_ca", "rogue")] {
        let (key, csr, pem, subj) =
            (p(&format!("{name}.key")), p(&format!("{name}.csr")), p(&format!("{name}.pem")), format!("/CN={cn}"));
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&args);
        let (ca_pem, ca_key) = (p(&format!("{ca}.pem")), p(&format!("{ca}.key")));
        let ext = p(if name == "server" { "san.cnf" } else { "client.cnf" });
        let mut args = vec!["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial"];
        args.extend(["-out", &pem, "-days", "2"]);
        args.extend(["-extfile", &ext]);
        openssl(&args);
    }
    dir
}
