//! Shared test helpers: `mod support;` in an integration test. Each test crate uses a
//! different subset, hence the allowance.
#![allow(dead_code)]

pub mod aiortc;
pub mod bot;
pub mod daemon;
pub mod haproxy;
pub mod local_tts;
pub mod lossy_relay;
pub mod prometheus;
pub mod slow_client;
pub mod tones;
pub mod webrtc_caller;
