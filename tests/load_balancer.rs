//! Many nodes behind a standard load balancer: Debian's HAProxy, running the shipped
//! `deploy/haproxy/haproxy.cfg`, in front of three `serve` nodes on loopback. Calls are
//! placed and bots attach only through HAProxy; call ids name their node, and HAProxy routes
//! every per-call request (the control WebSocket, `GET`, `DELETE`) to it. One node is then
//! drained (SIGTERM) mid-call: its calls finish whole while new calls go to the other two,
//! none refused.
//!
//! Nothing here asserts how long something took; timeouts only guard against a hang.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::bot::Bot;
use support::daemon::{release_bin, Daemon};
use support::haproxy::Haproxy;
use support::webrtc_caller::{get_json, http_request, WebrtcCaller};
use support::{local_tts, tones};
use tokio::sync::oneshot;

const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
const AUDIO_TIMEOUT: Duration = Duration::from_secs(30);
/// What this test is about is routing, not pacing: several calls start at once on a busy
/// two-core machine, so a start-up buffer of at least 200 ms (a late TTS would split a tone),
/// and frames up to 500 ms late still sent with continuous RTP time (a skipped slot would).
const CONFIG: &str = "[lmnt]\nvoice = \"tones\"\n[server]\ndrain_timeout_ms = 20000\n\
                      [audio]\njitter_min_ms = 200\nmax_late_ms = 500\n";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// The node drained mid-call.
const DRAINED: &str = "n3";
const CALLS: usize = 12;
/// Calls up at once before the drain.
const WAVE: usize = 4;
const CALLS_AFTER_DRAIN: usize = 4;

/// The id in a `Location` (`/v1/calls/{id}`) and the node it names (`{node}_{random}`).
fn id_and_node(location: &str) -> (String, String) {
    let id = location.rsplit('/').next().unwrap_or_default().to_owned();
    let node = id.split('_').next().unwrap_or_default().to_owned();
    (id, node)
}

/// Places a call through HAProxy and attaches its bot through HAProxy; the bot's
/// `call.started` names the same call, so the WebSocket reached the node that holds it.
async fn place(balancer: &Haproxy) -> (WebrtcCaller, Bot, String) {
    let base = balancer.base();
    let caller = WebrtcCaller::dial(&format!("{base}/v1/calls"), None)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a call through HAProxy was refused: {e}\n{}",
                balancer.log()
            )
        });
    let (id, node) = id_and_node(caller.location());
    let mut bot = Bot::attach(&base, caller.location()).await;
    let started = bot.wait_type("call.started", EVENT_TIMEOUT).await;
    assert_eq!(started["call"], id.as_str(), "the bot reached another call");
    (caller, bot, node)
}

/// One call's script: the bot streams `text`; `speaking` fires at `utterance.started`. A call
/// on a live node is checked (every frame sent received, the text exact) and hung up through
/// HAProxy; a call on a node being `drained` must finish its utterance whole, then end
/// `shutdown`.
async fn run_call(
    origin: String,
    caller: WebrtcCaller,
    mut bot: Bot,
    (node, drained): (String, bool),
    text: String,
    speaking: oneshot::Sender<()>,
) {
    bot.say_by_char(&text).await;
    bot.wait_type("utterance.started", EVENT_TIMEOUT).await;
    let _ = speaking.send(());
    let done = bot
        .wait_for(EVENT_TIMEOUT, |v| {
            v["type"] == "utterance.done" || v["type"] == "call.ended"
        })
        .await;
    assert_eq!(done["type"], "utterance.done", "{:?}", bot.event_values());
    if drained {
        let ended = bot.wait_type("call.ended", EVENT_TIMEOUT).await;
        assert_eq!(ended["reason"], "shutdown");
        caller
            .wait_heard_whole(&text, AUDIO_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{node}: {e}"));
    } else {
        caller.wait_holds_all_sent(&origin, AUDIO_TIMEOUT).await;
    }
    let heard = tones::collapse_spaces(&tones::decode_i16(&caller.pcm_48k(), 48_000));
    let figures = if drained {
        String::from("(drained: no figures)")
    } else {
        let call = get_json(&origin, caller.location()).await;
        format!(
            "late_frames {}, delayed_frames {}, underrun_frames {}",
            call["late_frames"], call["delayed_frames"], call["underrun_frames"]
        )
    };
    assert_eq!(
        heard,
        tones::expected(&text),
        "call on {node}: {figures}; caller RTP skips {:?}",
        caller.rtp_skips()
    );
    if !drained {
        assert_eq!(
            caller.hang_up().await.unwrap(),
            204,
            "DELETE through HAProxy"
        );
        assert_eq!(
            bot.wait_type("call.ended", EVENT_TIMEOUT).await["reason"],
            "caller_hangup"
        );
    }
    caller.close().await;
}

/// Places `n` calls through HAProxy, then every bot speaks its line at once; returns the
/// nodes that took them and the calls' scripts. With `drain`, the calls on [`DRAINED`] are
/// to be drained by the caller of this function: `drained_speaking` gets a receiver per such
/// call, firing once it speaks.
async fn wave(
    balancer: &Haproxy,
    n: usize,
    first: usize,
    drain: bool,
    drained_speaking: &mut Vec<oneshot::Receiver<()>>,
) -> (Vec<String>, Vec<tokio::task::JoinHandle<()>>) {
    let mut placed = Vec::new();
    for _ in 0..n {
        placed.push(place(balancer).await);
    }
    let mut nodes = Vec::new();
    let mut tasks = Vec::new();
    for (i, (caller, bot, node)) in placed.into_iter().enumerate() {
        let (speaking, spoke) = oneshot::channel();
        let drained = drain && node == DRAINED;
        if drained {
            drained_speaking.push(spoke);
        }
        let text = format!("caller {} on {node} hears this", first + i);
        nodes.push(node.clone());
        let origin = balancer.addr.to_string();
        let script = run_call(origin, caller, bot, (node, drained), text, speaking);
        tasks.push(tokio::spawn(script));
    }
    (nodes, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_haproxy_reach_every_node_route_back_and_survive_a_drain() {
    let bin = release_bin();
    let tts = local_tts::spawn(&bin, &[], &[], Stdio::null());
    let mut daemons: Vec<Daemon> = NODES
        .iter()
        .map(|node| {
            Daemon::start_bin(
                &bin,
                &tts.base_url,
                CONFIG,
                &[("LMNT_BRIDGE_NODE_ID", node)],
                &[],
            )
        })
        .collect();
    let nodes: Vec<(&str, _)> = NODES
        .iter()
        .copied()
        .zip(daemons.iter().map(|d| d.addr))
        .collect();
    let balancer = Haproxy::start(&nodes);

    // 12 calls, WAVE at a time: one two-core machine runs the callers, the bots, three
    // daemons and HAProxy.
    let mut landed = Vec::new();
    while landed.len() < CALLS {
        let (nodes, tasks) = wave(&balancer, WAVE, landed.len(), false, &mut Vec::new()).await;
        for task in tasks {
            task.await.expect("a call's script failed");
        }
        landed.extend(nodes);
    }
    for node in NODES {
        assert!(
            landed.iter().any(|n| n == node),
            "no call landed on {node}: {landed:?}"
        );
    }

    // Calls on every node; the drained node's are speaking when SIGTERM comes.
    let mut drained_speaking = Vec::new();
    let (nodes, tasks) = wave(&balancer, NODES.len(), CALLS, true, &mut drained_speaking).await;
    assert!(
        nodes.iter().any(|n| n == DRAINED),
        "no call of the drain wave on {DRAINED}: {nodes:?}"
    );
    for spoke in drained_speaking {
        spoke.await.expect("a call on the drained node speaks");
    }
    let drained = NODES.iter().position(|n| *n == DRAINED).unwrap();
    daemons[drained].terminate();
    // Once the node has taken the signal (its /readyz is 503), no new call may land on it,
    // whether or not HAProxy's health check has seen it yet.
    let node_origin = daemons[drained].addr.to_string();
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while http_request(&node_origin, "GET", "/readyz", &[], b"")
        .await
        .map(|r| r.status)
        .ok()
        != Some(503)
    {
        assert!(tokio::time::Instant::now() < deadline, "/readyz never 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // New calls meanwhile: every one is answered, by the other two nodes.
    for _ in 0..CALLS_AFTER_DRAIN {
        let (caller, mut bot, node) = place(&balancer).await;
        assert_ne!(node, DRAINED, "a new call went to the draining node");
        assert_eq!(caller.hang_up().await.unwrap(), 204);
        assert_eq!(
            bot.wait_type("call.ended", EVENT_TIMEOUT).await["reason"],
            "caller_hangup"
        );
        caller.close().await;
    }
    for task in tasks {
        task.await.expect("a call's script failed");
    }
    let mut node = daemons.remove(drained);
    let (status, log) =
        tokio::task::spawn_blocking(move || (node.wait_exit(EVENT_TIMEOUT), node.log()))
            .await
            .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "log:\n{log}");
    assert!(
        !log.contains("drain deadline reached"),
        "the drained node's calls finished by themselves:\n{log}"
    );
}
