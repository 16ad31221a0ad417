"""Drives one speech session with the official `lmnt` SDK (2.13.0) against LMNT_BASE_URL.

Flow: text, flush, text, finish; a concurrent reader collects every message until the
server closes. Prints one JSON line with what it saw; exits non-zero on any failure.
Usage: LMNT_API_KEY=k LMNT_BASE_URL=http://127.0.0.1:PORT python lmnt_session.py VOICE FORMAT RATE TEXT1 TEXT2
"""
import asyncio
import json
import sys

import lmnt
from lmnt import AsyncLmnt
from lmnt.resources.sessions import (
    SpeechSessionAudio,
    SpeechSessionError,
    SpeechSessionFlushComplete,
    SpeechSessionReady,
)


async def main() -> int:
    voice, fmt, rate, text1, text2 = sys.argv[1:6]
    client = AsyncLmnt()
    session = await client.speech.sessions.create(voice=voice, format=fmt, sample_rate=int(rate))
    seen = {"version": lmnt.__version__, "ready": False, "flush_nonces": [], "errors": [],
            "audio_bytes": 0, "audio_before_ack": 0, "order": []}
    audio = bytearray()

    async def reader():
        async for m in session:
            if isinstance(m, SpeechSessionAudio):
                audio.extend(m.audio)
                seen["order"].append("audio")
            elif isinstance(m, SpeechSessionReady):
                seen["ready"] = True
                seen["order"].append("ready")
            elif isinstance(m, SpeechSessionFlushComplete):
                seen["flush_nonces"].append(m.nonce)
                seen["audio_before_ack"] = len(audio)
                seen["order"].append("flush_complete")
            elif isinstance(m, SpeechSessionError):
                seen["errors"].append(str(m))

    task = asyncio.create_task(reader())
    await session.send_text(text1)
    nonce = await session.send_flush()
    await session.send_text(text2)
    await session.send_finish()
    await asyncio.wait_for(task, timeout=20)
    await session.close()
    seen["nonce"] = nonce
    seen["audio_bytes"] = len(audio)
    seen["audio_hex"] = audio.hex()
    print(json.dumps(seen))
    return 0 if not seen["errors"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
