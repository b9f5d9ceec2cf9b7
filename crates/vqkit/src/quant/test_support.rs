//! What the blocked encoders' tests share: every CPU backend, and their errors against the
//! loop's.

use crate::backend::check_finite;
use crate::backend::cpu::{CpuBackend, Isa};
use crate::error::Result;

/// A CPU backend for each instruction set this CPU has, at one thread and at two.
pub(crate) fn cpu_backends() -> Vec<CpuBackend> {
    let threads = Isa::available().into_iter().flat_map(|i| [(1, i), (2, i)]);
    threads
        .map(|(t, i)| CpuBackend::with_isa(Some(t), i).unwrap())
        .collect()
}

/// On every CPU backend, the error of `blocked` on `x`, asserted equal to that of checking
/// the points and then running `each` (the loop per sub-space or stage); the distinct
/// errors in order.
pub(crate) fn same_errors(
    x: &[f32],
    blocked: impl Fn(&CpuBackend) -> Result<Vec<u32>>,
    each: impl Fn(&CpuBackend) -> Result<Vec<u32>>,
) -> Vec<String> {
    let mut out = vec![];
    for b in cpu_backends() {
        let got = blocked(&b).expect_err("an error").to_string();
        let want = check_finite("points", x).and_then(|()| each(&b));
        assert_eq!(got, want.expect_err("an error").to_string());
        out.push(got);
    }
    out.dedup();
    out
}
