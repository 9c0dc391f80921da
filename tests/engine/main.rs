//! Integration tests of the engine: parity with diffusers on tiny models, the trace format,
//! and the CLI's handling of bad input. One binary, a module per area.

mod bundled;
mod clip_score;
mod common;
mod compare;
mod components;
mod errors;
mod eval;
mod fuzz;
mod generate_set;
mod hub;
mod inception;
mod metrics;
mod parity;
mod probe;
mod saliency;
mod sdxl;
mod shapes_metrics;
mod trace_io;
mod worker;
