//! Redis 7's cardinality estimator: Otmar Ertl's improved estimator ("New cardinality
//! estimation algorithms for HyperLogLog sketches", arXiv:1702.01284) over the histogram
//! of register values, with the same floating-point operations in the same order as
//! Redis's `hllCount`, so the result equals `PFCOUNT` for the same registers.

use super::{Q, REGISTERS};

/// How many registers hold each value 0..=63 (a register has 6 bits).
pub type Histogram = [u32; 64];

/// 0.5 / ln 2, the limit of the HyperLogLog bias constant as the register count grows
/// (Redis writes 0.721347520444481703680, the same `f64`).
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;

/// The histogram of a register array.
pub fn histogram(registers: &[u8; REGISTERS]) -> Histogram {
    // Eight registers per 64-bit word: a zero word (most of a small set) costs one
    // comparison. Consecutive registers count into four partial histograms, so equal
    // values (most registers of a large set are within a few ranks) do not wait on one
    // another's increment.
    let mut parts = [[0u32; 64]; 4];
    for chunk in registers.chunks_exact(8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        if word == 0 {
            parts[0][0] += 8;
            continue;
        }
        for k in 0..8 {
            parts[k & 3][((word >> (8 * k)) & 63) as usize] += 1;
        }
    }
    let mut hist = [0u32; 64];
    for part in &parts {
        for (h, p) in hist.iter_mut().zip(part) {
            *h += p;
        }
    }
    hist
}

/// The cardinality estimate of a register histogram (Redis's `PFCOUNT`).
pub fn estimate(hist: &Histogram) -> u64 {
    let m = REGISTERS as f64;
    let q = Q as usize;
    let mut z = m * tau((m - f64::from(hist[q + 1])) / m);
    for j in (1..=q).rev() {
        z += f64::from(hist[j]);
        z *= 0.5;
    }
    z += m * sigma(f64::from(hist[0]) / m);
    // An empty sketch gives z = ∞, hence 0.
    let e = ALPHA_INF * m * m / z;
    if e < 9_223_372_036_854_775_807.0 {
        // Half away from zero, as C's llroundl.
        e.round() as u64
    } else {
        // Out of a C `long long`'s range (only registers set by hand reach it): llroundl
        // gives LLONG_MIN on x86-64, which Redis returns cast to unsigned.
        1 << 63
    }
}

/// Ertl's σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k−1), summed until it stops changing.
fn sigma(x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut x, mut y, mut z) = (x, 1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

/// Ertl's τ(x) = (1 − x − Σ_{k≥1} (1 − x^(2^−k))² 2^−k) / 3, summed until it stops
/// changing.
fn tau(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut x, mut y, mut z) = (x, 1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        let d = 1.0 - x;
        z -= d * d * y;
        if z == before {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_zero_and_one_register_is_one() {
        let mut hist = [0u32; 64];
        hist[0] = REGISTERS as u32;
        assert_eq!(estimate(&hist), 0);
        hist[0] -= 1;
        hist[1] = 1;
        assert_eq!(estimate(&hist), 1);
    }

    #[test]
    fn all_registers_saturated_is_finite() {
        let mut hist = [0u32; 64];
        hist[Q as usize + 1] = REGISTERS as u32;
        // τ(0) = 0 and σ(0) = 0: z = 0 and the estimate is out of range, as in Redis.
        assert_eq!(estimate(&hist), 1 << 63);
    }
}
