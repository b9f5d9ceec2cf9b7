//! Packing of the GEMM's operands into the panels the micro-kernels read: op(A) into MR-row
//! panels, k-major, and op(B) into KC x NR panels, zero-padded at the edges. Transposed
//! operands go through 8 x 8 register transposes where the CPU has AVX.

use super::MatRef;

/// Packs rows `i0..i0+mr_rows` x steps `p0..p0+kc` of op(A) into one MR-row panel, k-major.
pub(super) fn pack_a(
    a: &MatRef,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    out: &mut [f32],
) {
    if a.cs == 1 {
        // Rows of A are contiguous along k: a transpose. By 8 x 8 blocks in registers for
        // whole 8-row panels, then row by row, scattering with stride MR.
        let mut p_start = 0;
        if let (8, 8, true, Some(t8)) = (mr, rows, kc >= 8, transpose8()) {
            p_start = kc / 8 * 8;
            for pb in (0..p_start).step_by(8) {
                let src = &a.data[i0 * a.rs + p0 + pb..];
                t8(src, a.rs, &mut out[pb * mr..], mr);
            }
        }
        for i in 0..rows {
            let row = &a.data[(i0 + i) * a.rs + p0..][..kc];
            for (p, &v) in row.iter().enumerate().skip(p_start) {
                out[p * mr + i] = v;
            }
        }
        if rows < mr {
            for step in out[..kc * mr].chunks_exact_mut(mr) {
                step[rows..].fill(0.0);
            }
        }
    } else if a.rs == 1 {
        // Columns of A are contiguous (a transposed operand): one slice copy per step.
        for p in 0..kc {
            let o = &mut out[p * mr..(p + 1) * mr];
            o[..rows].copy_from_slice(&a.data[(p0 + p) * a.cs + i0..][..rows]);
            o[rows..].fill(0.0);
        }
    } else {
        for p in 0..kc {
            let o = &mut out[p * mr..(p + 1) * mr];
            for (i, v) in o.iter_mut().enumerate() {
                *v = if i < rows { a.at(i0 + i, p0 + p) } else { 0.0 };
            }
        }
    }
}

/// Packs steps `p0..p0+kc` x columns `j0..j0+cols` of op(B) into one NR-column panel.
pub(super) fn pack_b(
    b: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
    out: &mut [f32],
) {
    if b.cs == 1 {
        for p in 0..kc {
            let o = &mut out[p * nr..(p + 1) * nr];
            let src = &b.data[(p0 + p) * b.rs + j0..][..cols];
            o[..cols].copy_from_slice(src);
            o[cols..].fill(0.0);
        }
    } else {
        // Columns of B are contiguous along k (a transposed operand): a transpose, by 8 x 8
        // blocks in registers where the CPU has AVX, element by element at the edges.
        let mut j = 0;
        if b.rs == 1 {
            let (j8, k8) = (cols / 8 * 8, kc / 8 * 8);
            if let (true, Some(t8)) = (j8 > 0 && k8 > 0, transpose8()) {
                for jb in (0..j8).step_by(8) {
                    for pb in (0..k8).step_by(8) {
                        let src = &b.data[(j0 + jb) * b.cs + p0 + pb..];
                        t8(src, b.cs, &mut out[pb * nr + jb..], nr);
                    }
                }
                // Rows p >= k8 of the first j8 columns are left for the loop below.
                for jj in 0..j8 {
                    let col = &b.data[(j0 + jj) * b.cs + p0..];
                    for p in k8..kc {
                        out[p * nr + jj] = col[p];
                    }
                }
                j = j8;
            }
        }
        for j in j..cols {
            let col = &b.data[(j0 + j) * b.cs + p0 * b.rs..];
            for p in 0..kc {
                out[p * nr + j] = col[p * b.rs];
            }
        }
        // The padding columns, row by row: column by column, each store would touch a
        // cache line of its own, kc of them per column.
        if cols < nr {
            for row in out[..kc * nr].chunks_exact_mut(nr) {
                row[cols..].fill(0.0);
            }
        }
    }
}

/// One 8 x 8 transpose, `dst[r * dst_stride + c] = src[c * src_stride + r]` for r, c < 8, done
/// in registers; `None` where the CPU cannot (then the packs go element by element).
pub type Transpose8 = fn(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize);

pub fn transpose8() -> Option<Transpose8> {
    #[cfg(target_arch = "x86_64")]
    if super::super::isa::has_avx() {
        return Some(|src, src_stride, dst, dst_stride| {
            assert!(src.len() > 7 * src_stride + 7 && dst.len() > 7 * dst_stride + 7);
            // SAFETY: AVX detected above; the assert keeps all 8 rows of 8 in both slices.
            unsafe {
                super::micro::x86::transpose8_avx(
                    src.as_ptr(),
                    src_stride,
                    dst.as_mut_ptr(),
                    dst_stride,
                )
            }
        });
    }
    None
}

/// `buf` (rows x k, slice-major) cut into its KC slices: `rows * min(kc, k - p0)` each.
pub(super) fn chunks_by(buf: &mut [f32], rows: usize, k: usize, kc: usize) -> Vec<&mut [f32]> {
    let mut out = Vec::with_capacity(k.div_ceil(kc));
    let mut rest = buf;
    for p0 in (0..k).step_by(kc) {
        let (head, tail) = rest.split_at_mut(rows * kc.min(k - p0));
        out.push(head);
        rest = tail;
    }
    out
}
