//! The demo's browser call page (`lmnt-bridge demo`): places a call over WebRTC and types
//! what the bot says into the call's control channel.

use axum::response::Html;

/// `GET /`.
pub(super) async fn index() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
