//! examples/linreg.rs trains against a real daemon and gets the loss down.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn linreg_example_converges() {
    // cargo test builds the examples next to the test binaries' directory.
    let exe = std::env::current_exe().unwrap();
    let bin: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples").join("linreg");
    assert!(bin.exists(), "{} not built", bin.display());
    let d = common::Daemon::start();
    let out = Command::new(&bin).arg(&d.url).output().expect("run linreg");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "linreg failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let loss: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("final loss: "))
        .expect("a final loss line")
        .trim()
        .parse()
        .expect("a number");
    // The data's noise is 0.01 * U(-1, 1): variance 3.3e-5. A model that
    // learned nothing sits near 14.
    assert!(loss < 1e-3, "final loss {loss}\n{stdout}");
    // The example closes its session.
    let mut c = optimd::Client::connect(&d.url).unwrap();
    assert!(c.sessions().unwrap().is_empty());
    drop(c);
    d.stop();
}
