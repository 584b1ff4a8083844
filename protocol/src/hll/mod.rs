//! HyperLogLog sketches bit-compatible with Redis 7 (`PFADD`, `PFCOUNT`, `PFMERGE`).
//!
//! The same element hashed here and `PFADD`ed into Redis lands in the same register with
//! the same value, the estimate of a register set equals Redis's `PFCOUNT` of it, and
//! Redis's string encodings (dense and sparse `HYLL` strings) are read and written, so a sketch can be merged into Croupier's `hll:*` keys with `PFMERGE` and
//! a key's value merged into a sketch. docs/aggregation.md has the specification, the
//! oracle tests and the figures.
//!
//! - [`hash`]: MurmurHash64A (Redis's variant and seed) and the register/rank split.
//! - [`estimate`]: the register histogram and Redis 7's estimator (Ertl's improved one).
//! - [`redis_string`]: Redis's string encodings, read and written.
//! - [`sketch`]: [`Sketch`], plain registers owned by one thread.
//! - [`shared`]: [`SketchWriter`] / [`SketchReader`], atomic registers one thread
//!   updates while others read live estimates, without locks.
//!
//! Nothing here performs I/O; bytes from the network are validated before they touch a
//! sketch, and a malformed string is an [`HllError`], never a panic.

pub mod estimate;
pub mod hash;
pub mod redis_string;
pub mod shared;
pub mod sketch;

pub use hash::{hash_element, index_and_rank, murmur_hash64a};
pub use redis_string::{Encoding, HllError};
pub use shared::{SketchReader, SketchWriter};
pub use sketch::Sketch;

/// Bits of the hash that select a register (Redis's `HLL_P`).
pub const P: u32 = 14;
/// Bits of the hash whose run of zeros is counted (Redis's `HLL_Q`, 64 − P).
pub const Q: u32 = 64 - P;
/// Number of registers (16,384).
pub const REGISTERS: usize = 1 << P;
/// Largest register value an added element can produce (Q + 1 = 51).
pub const MAX_RANK: u8 = Q as u8 + 1;
/// Seed of MurmurHash64A in Redis's `PFADD`.
pub const SEED: u32 = 0xadc8_3b19;
