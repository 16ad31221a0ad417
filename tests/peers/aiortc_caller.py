#!/usr/bin/env python3
"""An independent WebRTC caller for lmnt-bridge tests, built on aiortc 1.16.0 (loopback only).

Posts an SDP offer (WHIP style, non-trickle) to --url, expects 201 + answer + Location, talks
(a quiet 300 Hz tone, Opus, 20 ms) and records what it receives:

  --out-wav   received audio, mono s16 WAV at the decoded rate (48 kHz for Opus, 8 kHz for
              G.711), decoded frames in order
  --codec     offer only this codec (opus, PCMU or PCMA) instead of aiortc's list
  --out-json  one object per received RTP packet: arrival_ns (time.monotonic_ns at the
              receiver's RTP handler), sequence, rtp_timestamp, marker, payload_size

Prints {"event":"connected","location":...} on stdout once connected. Runs --seconds after
connecting, or until stdin closes, or until a `finish` command is done; then hangs up (DELETE
Location), closes, writes outputs and prints
{"event":"done","packets":N,"frames":F,"finished_by":WHY}. Exit 0 on success, 1 on failure to
connect.

Commands on stdin, one JSON object a line:

  {"cmd":"finish","frames":K,"timeout_s":T}
      finish once K audio frames in all have been decoded (at once if already so), or after
      T seconds (default 10) without getting there. aiortc drops what is still in its jitter
      buffer when the call closes, so a test that knows how many frames the server has sent
      uses this to be sure the WAV holds them. finished_by: "frames" or "timeout".

finished_by is otherwise "seconds", "stdin_closed" or "connection_failed".
"""

import argparse
import array
import asyncio
import fractions
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import wave

import aioice.ice
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

# aioice skips loopback when listing host addresses; these tests run on 127.0.0.1 only.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
TONE_HZ = 300.0
TONE_AMP = 3000

PACKETS = []

_orig_handle_rtp = RTCRtpReceiver._handle_rtp_packet


async def _recording_handle_rtp(self, packet, arrival_time_ms):
    PACKETS.append(
        {
            "arrival_ns": time.monotonic_ns(),
            "sequence": packet.sequence_number,
            "rtp_timestamp": packet.timestamp,
            "marker": bool(packet.marker),
            "payload_size": len(packet.payload),
        }
    )
    return await _orig_handle_rtp(self, packet, arrival_time_ms)


RTCRtpReceiver._handle_rtp_packet = _recording_handle_rtp


class ToneTrack(MediaStreamTrack):
    """A 300 Hz tone as 20 ms mono frames, paced on an absolute schedule."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self._n = 0
        self._t0 = None

    async def recv(self):
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        deadline = self._t0 + self._n * 0.02
        delay = deadline - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        start = self._n * FRAME
        samples = array.array(
            "h",
            (
                int(TONE_AMP * math.sin(2 * math.pi * TONE_HZ * (start + i) / RATE))
                for i in range(FRAME)
            ),
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = RATE
        frame.pts = start
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def to_mono(frame):
    """Decoded frame -> list of mono s16 samples (averaging channels)."""
    frame = frame if frame.format.name == "s16" else frame.reformat(format="s16")
    data = array.array("h", bytes(frame.planes[0]))
    ch = len(frame.layout.channels)
    if frame.format.is_planar or ch == 1:
        return data[: frame.samples]
    return array.array(
        "h", (sum(data[i * ch : (i + 1) * ch]) // ch for i in range(frame.samples))
    )


class FrameCount:
    """Decoded frames so far; wakes whoever waits for a count."""

    def __init__(self):
        self.n = 0
        self._changed = asyncio.Event()

    def add(self):
        self.n += 1
        self._changed.set()

    async def reach(self, k):
        while self.n < k:
            self._changed.clear()
            await self._changed.wait()


async def receive(track, pcm, rate, frames=None):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        rate[0] = frame.sample_rate
        pcm.extend(to_mono(frame))
        if frames is not None:
            frames.add()


async def run_stdin_commands(frames):
    """Reads commands until one is done or stdin closes; returns why it stopped."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return "stdin_closed"
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
        except ValueError:
            cmd = None
        if not isinstance(cmd, dict) or cmd.get("cmd") != "finish" or not isinstance(cmd.get("frames"), int):
            print(json.dumps({"event": "error", "status": "bad command", "line": line.decode(errors="replace").strip()}), flush=True)
            continue
        try:
            await asyncio.wait_for(frames.reach(cmd["frames"]), cmd.get("timeout_s", 10))
            return "frames"
        except asyncio.TimeoutError:
            return "timeout"


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="POST target, e.g. http://127.0.0.1:P/v1/calls")
    ap.add_argument("--bearer", help="bearer token")
    ap.add_argument("--seconds", type=float, help="run this long after connecting (default: until stdin closes)")
    ap.add_argument("--out-wav", help="write received audio here (mono, at the decoded rate)")
    ap.add_argument("--codec", choices=["opus", "PCMU", "PCMA"], help="offer only this codec")
    ap.add_argument("--out-json", help="write per-packet records here")
    args = ap.parse_args()

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()
    failed = asyncio.Event()
    pcm = array.array("h")
    rate = [RATE]
    frames = FrameCount()
    receivers = []

    @pc.on("connectionstatechange")
    async def on_state():
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState in ("failed", "closed"):
            failed.set()

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            receivers.append(asyncio.ensure_future(receive(track, pcm, rate, frames)))

    pc.addTrack(ToneTrack())
    if args.codec:
        wanted = f"audio/{args.codec}".lower()
        codecs = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == wanted]
        pc.getTransceivers()[0].setCodecPreferences(codecs)
    await pc.setLocalDescription(await pc.createOffer())  # waits for gathering (non-trickle)

    headers = {"Content-Type": "application/sdp"}
    if args.bearer:
        headers["Authorization"] = f"Bearer {args.bearer}"
    status, resp_headers, body = await asyncio.to_thread(
        http, "POST", args.url, pc.localDescription.sdp.encode(), headers
    )
    if status != 201:
        print(json.dumps({"event": "error", "status": status, "body": body.decode(errors="replace")}), flush=True)
        await pc.close()
        return 1
    location = resp_headers.get("Location") or resp_headers.get("location")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))

    done, _ = await asyncio.wait(
        [asyncio.ensure_future(connected.wait()), asyncio.ensure_future(failed.wait())],
        timeout=15,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if not connected.is_set():
        print(json.dumps({"event": "error", "status": "connect failed"}), flush=True)
        await pc.close()
        return 1
    print(json.dumps({"event": "connected", "location": location}), flush=True)

    async def why(aw, reason):
        result = await aw
        return result if reason is None else reason

    stop = [asyncio.ensure_future(why(failed.wait(), "connection_failed"))]
    if args.seconds is not None:
        stop.append(asyncio.ensure_future(why(asyncio.sleep(args.seconds), "seconds")))
    else:
        stop.append(asyncio.ensure_future(why(run_stdin_commands(frames), None)))
    finished, pending = await asyncio.wait(stop, return_when=asyncio.FIRST_COMPLETED)
    finished_by = next(iter(finished)).result()
    for t in pending:
        t.cancel()

    if location and not failed.is_set():
        parts = urllib.parse.urlsplit(args.url)
        target = urllib.parse.urlunsplit((parts.scheme, parts.netloc, location, "", ""))
        hdrs = {"Authorization": f"Bearer {args.bearer}"} if args.bearer else {}
        await asyncio.to_thread(http, "DELETE", target, None, hdrs)
    await pc.close()
    for r in receivers:
        r.cancel()

    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(PACKETS, f)
    if args.out_wav:
        with wave.open(args.out_wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate[0])
            w.writeframes(pcm.tobytes())
    print(json.dumps({"event": "done", "packets": len(PACKETS), "frames": frames.n, "finished_by": finished_by}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
