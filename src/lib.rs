//! # lmnt-bridge
//!
//! Gives WebRTC call bots and phone IVR voice agents a voice.
//!
//! ## Data flow of one utterance
//!
//! ```text
//! bot ──text/flush──▶ control ──▶ bridge (per-call task) ──▶ lmnt::client ──ws──▶ LMNT (or local_tts)
//!                                                                     │
//!  caller ◀──RTP/Opus── rtc ◀── pacer (one frame per t0 + n·20 ms) ◀── audio (PCM → 48 kHz → frames)
//! ```
//!
//! ## Timing contract
//!
//! Protocol and timing logic ([`lmnt::protocol`], [`audio`], [`pacer`]) never read a clock:
//! every decision takes an injected `now`, so tests drive them in virtual time. Deadlines are
//! `t0 + n × 20 ms`; RTP time is `base + n × 960` (the sample count at 48 kHz), never derived
//! from an `Instant`. Tokio tasks only move bytes between sockets and those state machines.
//!
//! ## Module map
//!
//! - [`lmnt`]: the LMNT speech-session protocol (client side) and its wire codec.
//! - [`local_tts`]: an LMNT-compatible speech-session server (`lmnt-bridge local-tts`).
//! - [`speak`]: `lmnt-bridge speak`, one session from text to a WAV file.
//! - [`audio`]: LMNT audio in, 20 ms PCM frames at 48 kHz out; Opus encode and decode.
//! - [`pacer`]: the jitter-aware playout schedule.
//! - [`rtc`]: the only module that touches webrtc-rs.
//! - [`bridge`]: one task per call joining the above.
//! - [`control`]: the bot's control-channel messages.
//! - [`http`]: the axum listener (signaling, control upgrade, health, metrics).
//! - [`config`]: configuration (file, environment, flags), validated before any socket is bound.
//! - [`daemon`]: process lifecycle: signals, drain, `sd_notify`.
//! - [`metrics`]: Prometheus metrics (names, labels, histograms).
//! - [`fault`]: whose fault an error is and whether a retry helps.

pub mod audio;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod fault;
pub mod http;
pub mod lmnt;
pub mod local_tts;
pub mod logging;
pub mod metrics;
pub mod pacer;
pub mod rtc;
pub mod secret;
pub mod speak;
