//! `cargo bench --bench tasks`: tasks on a real Docker engine. The warm
//! path's benchmarks live in `benches/warm/`; the cold path's join them in
//! this group.

mod warm;

use criterion::{criterion_group, criterion_main};

criterion_group!(benches, warm::warm_benches);
criterion_main!(benches);
