//! # lmnt-bridge
//!
//! Gives WebRTC call bots and phone IVR voice agents a voice.
//!
//! ## Data flow, one folder a stage
//!
//! ```text
//! signaling     call                       LMNT session        playout            codec       RTP
//! http ──offer─▶ call::registry ─▶ call::driver ⇄ call::core ─▶ lmnt::link/client ─ws─▶ LMNT (or local_tts)
//!   │ (bot: control)                        │            ◀─audio─┘
//!   └─ control ──text/flush──▶ driver ─▶ core ─▶ playout (t0 + n·20 ms, PCM) ─▶ codec (encode) ─▶ rtc ─▶ caller
//! caller ─RTP─▶ rtc ─▶ driver ─▶ core (codec decoder, 16 kHz) ─▶ control ─▶ bot
//! ```
//!
//! ## Timing contract
//!
//! Protocol and timing logic ([`call::core`], [`lmnt::protocol`], [`audio`], [`playout`])
//! never read a clock: every decision takes an injected `now`, so tests drive them in virtual
//! time. Deadlines are `t0 + n × 20 ms`; RTP time is `base + n × ` the codec's ticks per
//! frame (960 for Opus), never derived from an `Instant`. Tokio tasks only move bytes between
//! sockets and those state machines.
//!
//! ## Module map
//!
//! - [`http`]: signaling and the listener (offer/answer, the bot's control upgrade, health,
//!   metrics).
//! - [`control`]: the bot's control-channel messages.
//! - [`dialout`]: the daemon dials the bot (allowed URLs, signed upgrade, retry budget).
//! - [`call`]: one call: admission ([`call::registry`]), its decisions without I/O
//!   ([`call::core`], [`call::ledger`]) and the task that drives them ([`call::driver`]).
//! - [`lmnt`]: the LMNT speech session (client side), its wire codec, and the link that keeps
//!   one call's session up.
//! - [`playout`]: the jitter-aware schedule of 20 ms PCM frames.
//! - [`audio`]: LMNT audio in, PCM frames at the codec's rate out.
//! - [`recording`]: call recording: caller and bot mixed onto the call's timeline, a stereo WAV
//!   streamed to disk.
//! - [`codec`]: the negotiated codec (Opus): payload type, RTP clock, encoder, decoder.
//! - [`rtc`]: the only module that touches webrtc-rs.
//! - [`local_tts`]: an LMNT-compatible speech-session server (`lmnt-bridge local-tts`).
//! - [`speak`]: `lmnt-bridge speak`, one session from text to a WAV file.
//! - [`config`]: configuration (file, environment, flags), validated before any socket is bound.
//! - [`daemon`]: process lifecycle: signals, drain, `sd_notify`.
//! - [`metrics`]: Prometheus metrics (names, labels, histograms).
//! - [`fault`]: whose fault an error is and whether a retry helps.

pub mod audio;
pub mod call;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dialout;
pub mod exit;
pub mod fault;
pub mod http;
pub mod lmnt;
pub mod local_tts;
pub mod logging;
pub mod metrics;
pub mod playout;
pub mod recording;
pub mod rtc;
pub mod secret;
pub mod speak;
