//! The parity suite on the CPU backend, for every instruction set this CPU has and every
//! parallelism mode: one thread (no rayon), and pools of 2 and 3 threads.

mod common;

use vqkit::backend::cpu::{CpuBackend, Isa};

fn backends() -> Vec<CpuBackend> {
    let mut v = Vec::new();
    for isa in Isa::available() {
        for threads in [1, 2, 3] {
            v.push(CpuBackend::with_isa(Some(threads), isa).expect("detected ISA"));
        }
    }
    v
}

backend_suite!(backends, 513, 24);

#[test]
fn every_isa_and_thread_count_gives_the_same_bits() {
    // Thread count must not change a single bit; the ISA may (FMA vs mul+add rounding),
    // so compare within each ISA.
    for isa in Isa::available() {
        let one = CpuBackend::with_isa(Some(1), isa).unwrap();
        let three = CpuBackend::with_isa(Some(3), isa).unwrap();
        let mut rng = vqkit::rng::Rng::new(5);
        let (n, k, d) = (1000, 70, 33);
        let x = common::data(&mut rng, n * d);
        let c = common::data(&mut rng, k * d);
        let a = vqkit::ops::kmeans_step(&one, &x, &mut c.clone(), d).unwrap();
        let b = vqkit::ops::kmeans_step(&three, &x, &mut c.clone(), d).unwrap();
        assert_eq!(a.inertia.to_bits(), b.inertia.to_bits(), "{isa:?}");
        assert_eq!(a.counts, b.counts);
        let s = common::run_argmin(&one, &x, &c, vqkit::Shape::new(n, k, d)).unwrap();
        let t = common::run_argmin(&three, &x, &c, vqkit::Shape::new(n, k, d)).unwrap();
        assert_eq!(s.0, t.0);
        assert!(
            s.1.iter()
                .zip(&t.1)
                .all(|(p, q)| p.to_bits() == q.to_bits())
        );
    }
}

#[test]
fn unsupported_settings_are_errors() {
    assert!(CpuBackend::new(Some(0)).is_err());
}
