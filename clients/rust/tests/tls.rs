//! tls+tcp:// against the real daemon requiring client certificates: a
//! whole session with a client certificate; no certificate, one from
//! another CA, or trusting another CA fails the connect with a transport
//! error saying why, well within its timeout; the daemon serves on.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{make_pki, Daemon};
use optimd::{Client, Error, OpenOptions, StepOptions, TensorRef, TlsConfig};

fn tls_daemon(pki: &Path) -> Daemon {
    let p = |n: &str| pki.join(n).to_str().unwrap().to_owned();
    Daemon::start_listen(
        "tls+tcp://127.0.0.1:0",
        &["--tls-cert", &p("server.pem"), "--tls-key", &p("server.key"), "--tls-ca", &p("ca.pem"), "--tls-client-auth", "required"],
    )
}

fn config(pki: &Path, ca: &str, client: Option<&str>) -> TlsConfig {
    let (cert, key) = client.map(|c| (pki.join(format!("{c}.pem")), pki.join(format!("{c}.key")))).unzip();
    let pair = cert.as_deref().zip(key.as_deref());
    TlsConfig::from_pem_files(pki.join(format!("{ca}.pem")), pair).expect("TLS config")
}

#[test]
fn whole_session_over_tls() {
    let pki = make_pki();
    let d = tls_daemon(&pki);
    assert!(d.url.starts_with("tls+tcp://127.0.0.1:"), "{}", d.url);
    let mut c = Client::connect_tls(&d.url, config(&pki, "ca", Some("client")), Duration::from_secs(30)).expect("connect");
    let lr = 0.1;
    let opened = c.open("tls", "adam", &OpenOptions::new().hparam("lr", lr)).expect("open");
    let s = &opened.session;
    let init = [0f32, 1., 2., 3., 4., 5.];
    assert_eq!(c.register(s, &[("w", TensorRef::f32(&[6], &init).unwrap())]).expect("register"), 1);
    let g = [1f32; 6];
    let r = c.step(s, &[("w", TensorRef::f32(&[6], &g).unwrap())], &StepOptions::new()).expect("step");
    let params = r.params.expect("the step reply carries the parameters");
    let w = params["w"].to_f32().unwrap();
    for (i, (&got, &x)) in w.iter().zip(&init).enumerate() {
        // Adam's first step moves every element by lr*g/(|g|+eps).
        let want = x as f64 - lr;
        assert!((got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "w[{i}] = {got}, want {want}");
    }
    let pulled = c.pull(s, None).expect("pull");
    assert_eq!(pulled["w"].to_f32().unwrap(), w);
    c.close_session(s).expect("close");
    assert!(c.pull(s, None).is_err(), "pull on a closed session succeeded");
    drop(c);
    d.stop();
    let _ = std::fs::remove_dir_all(&pki);
}

#[test]
fn refused_clients_fail_with_a_clear_error() {
    let pki = make_pki();
    let d = tls_daemon(&pki);
    let cases = [
        ("no client certificate", config(&pki, "ca", None), "refused this client's certificate"),
        ("a client certificate from another CA", config(&pki, "ca", Some("rogue")), "refused this client's certificate"),
        ("trusting another CA", config(&pki, "rogue_ca", Some("client")), "UnknownIssuer"),
    ];
    for (name, tls, why) in cases {
        match Client::connect_tls(&d.url, tls, Duration::from_secs(20)) {
            Ok(_) => panic!("{name}: connected"),
            Err(e @ Error::Transport(_)) => {
                assert!(!e.is_timeout(), "{name}: {e}");
                let msg = e.to_string();
                eprintln!("{name}: {msg}");
                assert!(msg.contains(why), "{name}: {msg}");
                assert!(msg.contains("TLS"), "{name}: {msg}");
            }
            Err(e) => panic!("{name}: {e:?}"),
        }
    }
    // A tls+tcp:// URL without TLS settings, and half a client certificate.
    assert!(matches!(Client::connect(&d.url), Err(Error::Invalid(_))));
    let bad = TlsConfig::from_pem_files(pki.join("ca.pem"), Some((&pki.join("client.pem"), &pki.join("ca.pem"))));
    assert!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");

    let mut c = Client::connect_tls(&d.url, config(&pki, "ca", Some("client")), Duration::from_secs(30)).expect("connect");
    assert_eq!(c.hello(None).expect("hello").protocol, 1);
    drop(c);
    d.stop();
    let _ = std::fs::remove_dir_all(&pki);
}
