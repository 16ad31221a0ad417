#!/usr/bin/env python3
"""Relays an LLM's streamed answers into a live call: the real use of lmnt-bridge.

The pattern LMNT documents for conversations: one speech session for the whole conversation
(the daemon opens it when the call is placed and keeps it until hang-up; this bot keeps one
control channel for the call), text streamed in as the model writes it, and one flush per
utterance, here at each sentence end, so the caller hears the first sentence while the model
is still writing the next.

    OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=... OPENAI_MODEL=gpt-4o-mini \\
      .venv/bin/python examples/llm_relay.py ws://127.0.0.1:8080/v1/calls/ID/control \\
      "What are your opening hours?"

Any OpenAI-compatible endpoint works (vLLM, llama.cpp's server, Ollama, ...): the bot posts
`{OPENAI_BASE_URL}/chat/completions` with `"stream": true` and reads the server-sent events.
The caller's turns come from the arguments after the URL, else from stdin, one per line; in a
real agent they come from a speech recogniser fed with the caller's audio (the binary frames
on the same channel). A keypad press interrupts the answer (barge-in) and becomes a turn.
Set LMNT_BRIDGE_TOKEN when the daemon requires a bearer token. Exits 0 when the call ends.
"""
import asyncio
import json
import os
import re
import sys
import threading
import urllib.request

from websockets.asyncio.client import connect

SYSTEM = "You are a friendly phone agent. Answer briefly, in plain sentences, without markup."
SENTENCE_BREAK = re.compile(r"(?<=[.!?])(?=\s)")  # between a sentence end and the next space


def log(*parts):
    print("llm_relay:", *parts, file=sys.stderr, flush=True)


def stream_completion(messages, put, stop):
    """Posts one streaming chat completion; calls put(token) per content delta (in a thread)."""
    base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
    key = os.environ.get("OPENAI_API_KEY")  # sent to the endpoint only, never logged
    body = {"model": os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), "messages": messages,
            "stream": True}
    request = urllib.request.Request(
        base + "/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream",
                 **({"Authorization": f"Bearer {key}"} if key else {})})
    with urllib.request.urlopen(request, timeout=60) as response:
        for raw in response:  # server-sent events: "data: {...}" lines, then "data: [DONE]"
            line = raw.decode("utf-8").strip()
            if stop.is_set() or line == "data: [DONE]":
                return
            if line.startswith("data:"):
                choices = json.loads(line[5:]).get("choices") or [{}]
                token = (choices[0].get("delta") or {}).get("content")
                if token:
                    put(token)


def read_turns(loop, turns):
    """Feeds stdin's lines to `turns` as they are typed (in a thread), then None at EOF."""
    for line in sys.stdin:
        if line.strip():
            loop.call_soon_threadsafe(turns.put_nowait, line.strip())
    loop.call_soon_threadsafe(turns.put_nowait, None)


class Relay:
    def __init__(self, ws):
        self.ws = ws
        self.flushed = 0  # utterances flushed so far: the daemon numbers them 1, 2, 3...
        self.settled = 0  # every utterance up to this number has been played or dropped
        self.changed = asyncio.Event()  # set whenever `settled` or `ended` may have moved
        self.turns = asyncio.Queue()  # the caller's turns; None ends the conversation
        self.interrupted = False
        self.ended = False
        self.after_sentence_end = False
        self.unflushed = False

    async def send(self, **message):
        await self.ws.send(json.dumps(message))

    async def flush(self):
        await self.send(type="flush")
        self.flushed += 1
        self.unflushed = False

    async def relay_token(self, token):
        """Sends a token; flushes first at each sentence boundary it crosses."""
        for i, piece in enumerate(SENTENCE_BREAK.split(token)):
            if (i > 0 or self.after_sentence_end) and piece[:1].isspace() and self.unflushed:
                await self.flush()
            if piece:
                await self.send(type="text", text=piece)
                self.unflushed = True
                self.after_sentence_end = piece.rstrip("\"')]").endswith((".", "!", "?"))

    async def answer(self, messages):
        """Streams one LLM answer into the call; returns the text sent."""
        loop, tokens, stop = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()
        put = lambda t: loop.call_soon_threadsafe(tokens.put_nowait, t)  # noqa: E731
        worker = loop.run_in_executor(None, stream_completion, messages, put, stop)
        worker.add_done_callback(lambda _: put(None))
        self.interrupted, reply = False, ""
        while (token := await tokens.get()) is not None:
            if self.interrupted or self.ended:
                stop.set()
                continue
            await self.relay_token(token)
            reply += token
        await worker  # raises what the request raised
        if self.unflushed and not self.interrupted:
            await self.flush()
        self.after_sentence_end = False
        return reply

    async def events(self):
        async for frame in self.ws:
            if isinstance(frame, bytes):
                continue  # the caller's audio (PCM s16le, 16 kHz, 20 ms): the recogniser's input
            event = json.loads(frame)
            log("<-", frame)
            if event["type"] == "utterance.done":
                self.settled = max(self.settled, event["utterance"])
            elif event["type"] == "cleared":  # heard_text: when the daemon reports it
                log(f"interrupted after {event['played_ms']} ms:", event.get("heard_text", ""))
            elif event["type"] == "dtmf":
                self.interrupted = True
                await self.send(type="clear")  # barge-in: stop talking at once
                self.settled, self.unflushed = self.flushed, False
                await self.turns.put(f"(The caller pressed {event['digit']} on the keypad.)")
            elif event["type"] == "call.ended":
                break
            self.changed.set()
        self.ended = True
        self.changed.set()

    async def settle(self):
        """Waits until the caller has heard (or been spared) everything flushed."""
        while self.settled < self.flushed and not self.ended:
            self.changed.clear()
            await self.changed.wait()

    async def converse(self):
        events = asyncio.create_task(self.events())
        messages = [{"role": "system", "content": SYSTEM}]
        while not self.ended and (turn := await self.turns.get()) is not None:
            log("caller:", turn)
            messages.append({"role": "user", "content": turn})
            messages.append({"role": "assistant", "content": await self.answer(messages)})
            await self.settle()
        if not self.ended:
            log("conversation over: hanging up")
            await self.send(type="hangup")
        await events
        return 0


async def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    token = os.environ.get("LMNT_BRIDGE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(sys.argv[1], additional_headers=headers) as ws:
        relay = Relay(ws)
        if len(sys.argv) > 2:
            for turn in sys.argv[2:]:
                relay.turns.put_nowait(turn)
            relay.turns.put_nowait(None)
        else:
            loop = asyncio.get_running_loop()
            threading.Thread(target=read_turns, args=(loop, relay.turns), daemon=True).start()
        return await relay.converse()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
