#!/usr/bin/env python3
"""A minimal lmnt-bridge bot in Python (`websockets`).

Attaches to one call's control channel, streams an answer word by word with a flush per
sentence (each sentence is one utterance), answers a keypad press by interrupting itself and
saying which key it heard, and hangs up once everything it said has been played.

    .venv/bin/python examples/python_bot.py ws://127.0.0.1:8080/v1/calls/ID/control ["Answer."]

Place the call first (the demo page, or any WebRTC client posting an offer to /v1/calls).
Set LMNT_BRIDGE_TOKEN when the daemon requires a bearer token. Exits 0 when the call ends.
"""
import asyncio
import json
import os
import re
import sys

from websockets.asyncio.client import connect

ANSWER = "Hello, and thanks for calling. This answer was streamed word by word. Goodbye!"


def sentences(text):
    """The sentences of `text`, each with its end punctuation and trailing space."""
    return [s for s in re.findall(r"[^.!?]*[.!?]+\s*|[^.!?]+$", text) if s.strip()]


def log(*parts):
    print("python_bot:", *parts, file=sys.stderr, flush=True)


class Bot:
    def __init__(self, ws):
        self.ws = ws
        self.flushed = 0  # utterances flushed so far: the daemon numbers them 1, 2, 3...
        self.settled = 0  # every utterance up to this number has been played or dropped
        self.speaking = None  # the task streaming the current answer
        self.hung_up = False

    async def send(self, **message):
        await self.ws.send(json.dumps(message))

    async def say(self, text):
        """Streams `text` word by word (as an LLM streams tokens), a flush after each sentence."""
        for sentence in sentences(text):
            for word in re.findall(r"\S+\s*", sentence):
                await self.send(type="text", text=word)
            await self.send(type="flush")
            self.flushed += 1

    async def run(self, answer):
        self.speaking = asyncio.create_task(self.say(answer))
        async for frame in self.ws:
            if isinstance(frame, bytes):
                continue  # the caller's audio (PCM s16le, 16 kHz, 20 ms): feed a recogniser here
            event = json.loads(frame)
            kind = event["type"]
            log("<-", frame)
            if kind == "utterance.done":
                self.settled = max(self.settled, event["utterance"])
            elif kind == "cleared":
                heard = event.get("heard_text")  # present when the daemon reports it
                log(f"utterance {event['utterance']} interrupted after {event['played_ms']} ms"
                    + (f", the caller heard {heard!r}" if heard is not None else ""))
            elif kind == "dtmf":
                # A key pressed mid-prompt interrupts it (barge-in), then the bot answers it.
                self.speaking.cancel()
                await self.send(type="clear")
                self.settled = self.flushed  # interrupted utterances get no utterance.done
                self.speaking = asyncio.create_task(self.say(f"You pressed {event['digit']}."))
            elif kind == "call.ended":
                return 0
            if self.speaking.done() and self.settled >= self.flushed and not self.hung_up:
                if not self.speaking.cancelled() and self.speaking.exception():
                    raise self.speaking.exception()
                log("everything was played: hanging up")
                await self.send(type="hangup")
                self.hung_up = True
        log("the control channel closed before call.ended")
        return 1


async def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    token = os.environ.get("LMNT_BRIDGE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(sys.argv[1], additional_headers=headers) as ws:
        return await Bot(ws).run(sys.argv[2] if len(sys.argv) > 2 else ANSWER)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
