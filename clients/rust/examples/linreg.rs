//! Linear regression trained remotely: the gradients are computed here, the
//! Adam updates in the daemon.
//!
//! cargo run --example linreg [URL]   (default $OPTIMD_URL, else tcp://127.0.0.1:7878)

use std::time::Duration;

use optimd::{Client, OpenOptions, StepOptions, TensorRef, DEFAULT_URL};

const N: usize = 256;
const D: usize = 4;

// A small deterministic generator, so every run sees the same data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("OPTIMD_URL").ok())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let mut rng = Lcg(42);
    let w_true = [2.0f32, -3.0, 0.5, 1.0];
    let b_true = 0.7f32;
    let x: Vec<f32> = (0..N * D).map(|_| rng.next()).collect();
    let y: Vec<f32> = (0..N)
        .map(|i| (0..D).map(|j| x[i * D + j] * w_true[j]).sum::<f32>() + b_true + 0.01 * rng.next())
        .collect();

    let mut client = Client::connect_timeout(&url, Duration::from_secs(30))?;
    let name = format!("linreg-{}", std::process::id());
    let session = client.open(&name, "adam", &OpenOptions::new().hparam("lr", 0.05))?.session;
    let mut w = vec![0.0f32; D];
    let mut b = vec![0.0f32; 1];
    client.register(&session, &[("w", TensorRef::f32(&[D as u64], &w)?), ("b", TensorRef::f32(&[], &b)?)])?;

    let mut loss = f32::INFINITY;
    for step in 0..400 {
        let mut gw = vec![0.0f32; D];
        let mut gb = 0.0f32;
        loss = 0.0;
        for i in 0..N {
            let pred = (0..D).map(|j| x[i * D + j] * w[j]).sum::<f32>() + b[0];
            let err = pred - y[i];
            loss += err * err / N as f32;
            for j in 0..D {
                gw[j] += 2.0 * err * x[i * D + j] / N as f32;
            }
            gb += 2.0 * err / N as f32;
        }
        let gb = [gb];
        let r = client.step(
            &session,
            &[("w", TensorRef::f32(&[D as u64], &gw)?), ("b", TensorRef::f32(&[], &gb)?)],
            &StepOptions::new(),
        )?;
        let params = r.params.ok_or("the step returned no parameters")?;
        w = params["w"].to_f32()?;
        b = params["b"].to_f32()?;
        if step % 100 == 0 {
            println!("step {step:3}  loss {loss:.6}");
        }
    }
    println!("w = {w:?}, b = {:.4} (true {w_true:?}, {b_true})", b[0]);
    println!("final loss: {loss:.8}");
    client.close_session(&session)?;
    Ok(())
}
