//! A ComfyUI 0.3.64 simulator for tests and benchmarks: it answers the HTTP and WebSocket API with
//! the shapes, status codes and message order captured from a real server (see `fixtures/`).
#![forbid(unsafe_code)]

mod config;
mod exec;
mod files;
mod frontend;
mod http;
mod images;
mod jobs;
pub mod json;
mod objinfo;
mod server;
mod state;
mod userdata;
mod validate;
mod ws;

pub use config::SimConfig;
pub use server::Simulator;
pub use state::{PromptRun, RecordedRequest};

/// A small valid PNG (8x8 grey), handy for upload tests.
pub fn sample_png() -> Vec<u8> {
    images::small_png_bytes()
}
