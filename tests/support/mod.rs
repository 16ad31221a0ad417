//! Shared test helpers: `mod support;` in an integration test.
#![allow(dead_code)]

pub mod local_tts;
pub mod tones;
