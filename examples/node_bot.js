#!/usr/bin/env node
// A minimal lmnt-bridge bot in Node (`ws`, pinned in examples/package.json: `npm ci --prefix
// examples`).
//
// Attaches to one call's control channel, streams an answer word by word with a flush per
// sentence (each sentence is one utterance), answers a keypad press by interrupting itself and
// saying which key it heard, and hangs up once everything it said has been played.
//
//   node examples/node_bot.js ws://127.0.0.1:8080/v1/calls/ID/control ["Answer."]
//
// Place the call first (the demo page, or any WebRTC client posting an offer to /v1/calls).
// Set LMNT_BRIDGE_TOKEN when the daemon requires a bearer token. Exits 0 when the call ends.
'use strict';
const WebSocket = require('ws');

const ANSWER = 'Hello, and thanks for calling. This answer was streamed word by word. Goodbye!';
const [url, answer = ANSWER] = process.argv.slice(2);
if (!url) {
  console.error('usage: node examples/node_bot.js CONTROL_URL [ANSWER]');
  process.exit(64);
}
const log = (...parts) => console.error('node_bot:', ...parts);
// The sentences of `text`, each with its end punctuation and trailing space.
const sentences = (text) => (text.match(/[^.!?]*[.!?]+\s*|[^.!?]+$/g) || []).filter((s) => s.trim());

const token = process.env.LMNT_BRIDGE_TOKEN;
const ws = new WebSocket(url, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
const send = (message) => ws.send(JSON.stringify(message));
let flushed = 0; // utterances flushed so far: the daemon numbers them 1, 2, 3...
let settled = 0; // every utterance up to this number has been played or dropped
let speaking = null; // { done, cancelled } of the answer being streamed
let hungUp = false;
let ended = false;

// Streams `text` word by word (as an LLM streams tokens), a flush after each sentence. Each
// word waits a tick, as tokens would, so an interruption can stop it.
function say(text) {
  const job = { done: false, cancelled: false };
  (async () => {
    for (const sentence of sentences(text)) {
      for (const word of sentence.match(/\S+\s*/g) || []) {
        if (job.cancelled) return;
        send({ type: 'text', text: word });
        await new Promise(setImmediate);
      }
      if (job.cancelled) return;
      send({ type: 'flush' });
      flushed += 1;
    }
    job.done = true;
    maybeHangUp();
  })();
  return job;
}

function maybeHangUp() {
  if (speaking.done && settled >= flushed && !hungUp) {
    log('everything was played: hanging up');
    send({ type: 'hangup' });
    hungUp = true;
  }
}

ws.on('open', () => { speaking = say(answer); });
ws.on('message', (data, isBinary) => {
  if (isBinary) return; // the caller's audio (PCM s16le, 16 kHz, 20 ms): feed a recogniser here
  const event = JSON.parse(data.toString());
  log('<-', data.toString());
  switch (event.type) {
    case 'utterance.done':
      settled = Math.max(settled, event.utterance);
      break;
    case 'cleared': {
      const heard = 'heard_text' in event ? `, the caller heard ${JSON.stringify(event.heard_text)}` : '';
      log(`utterance ${event.utterance} interrupted after ${event.played_ms} ms${heard}`);
      break;
    }
    case 'dtmf':
      // A key pressed mid-prompt interrupts it (barge-in), then the bot answers it.
      speaking.cancelled = true;
      send({ type: 'clear' });
      settled = flushed; // interrupted utterances get no utterance.done
      speaking = say(`You pressed ${event.digit}.`);
      break;
    case 'call.ended':
      ended = true;
      ws.close();
      return;
  }
  maybeHangUp();
});
ws.on('close', () => {
  if (!ended) log('the control channel closed before call.ended');
  process.exit(ended ? 0 : 1);
});
ws.on('error', (e) => { log('error:', e.message); process.exit(1); });
