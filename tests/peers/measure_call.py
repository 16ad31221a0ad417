#!/usr/bin/env python3
"""Measures one call end to end from the caller's seat: aiortc caller + bot in one process,
so every figure is on one clock (time.monotonic_ns).

Places a call to --url (POST .../v1/calls), attaches a bot to the control channel, speaks
--utterances utterances of the `tones` voice (streamed character by character, then a flush),
each after the previous one's utterance.done, and prints one JSON object with:

  flush_to_first_audio_ms   {p50, p99, max}: bot flush -> first decoded non-silent frame
  flush_to_first_packet_ms  {p50, p99, max}: bot flush -> RTP arrival of that frame's packet
  done_after_last_frame_ms  {p50, p99, max}: utterance.done at the bot - RTP arrival of the
                            utterance's last frame (its first audible frame's RTP time plus
                            the frames its audio_ms makes: ceil((audio_ms*48 + 2*240)/960),
                            240 being the daemon's resampler delay at 48 kHz)
  interarrival_dev_ms       {p50, p99, max}: |packet inter-arrival - 20 ms|
  received_audio_ms / sent_audio_ms: RTP duration received vs frames the daemon reports sent
"""

import argparse
import asyncio
import json
import math
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aiortc_caller as caller  # noqa: E402  (installs the RTP arrival hook)
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

SILENCE_RMS = 500.0  # the tones voice is at half scale (RMS ~ 11 500); Opus silence is ~0


def percentiles(values):
    if not values:
        return None
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]
    return {"p50": round(pick(0.50), 3), "p99": round(pick(0.99), 3), "max": round(v[-1], 3), "n": len(v)}


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--utterances", type=int, default=50)
    ap.add_argument("--text", default="hello 42")
    ap.add_argument("--gap-ms", type=float, default=150.0)
    args = ap.parse_args()

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()
    frames = []  # (recv_ns, pts, rms)

    @pc.on("connectionstatechange")
    async def on_state():
        if pc.connectionState == "connected":
            connected.set()

    async def receive(track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = caller.to_mono(frame)
            rms = math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))
            frames.append((time.monotonic_ns(), frame.pts, rms))

    tasks = []

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            tasks.append(asyncio.ensure_future(receive(track)))

    pc.addTrack(caller.ToneTrack())
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, body = await asyncio.to_thread(
        caller.http, "POST", args.url, pc.localDescription.sdp.encode(), {"Content-Type": "application/sdp"}
    )
    if status != 201:
        print(json.dumps({"error": f"POST {status}: {body.decode(errors='replace')}"}))
        return 1
    location = headers.get("Location") or headers.get("location")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
    await asyncio.wait_for(connected.wait(), 15)
    parts = urllib.parse.urlsplit(args.url)
    call_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, location, "", ""))
    ws_url = urllib.parse.urlunsplit(("ws", parts.netloc, location + "/control", "", ""))

    flushes, dones = {}, {}
    async with connect(ws_url, max_size=2**20) as ws:
        async def events():
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                if event["type"] == "utterance.done":
                    dones[event["utterance"]] = (time.monotonic_ns(), event)

        reader = asyncio.ensure_future(events())
        await asyncio.sleep(0.5)  # let the stream settle past ICE/DTLS start-up
        for n in range(1, args.utterances + 1):
            for ch in args.text:
                await ws.send(json.dumps({"type": "text", "text": ch}))
            flushes[n] = time.monotonic_ns()
            await ws.send(json.dumps({"type": "flush"}))
            deadline = time.monotonic() + 10
            while n not in dones and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            if n not in dones:
                print(json.dumps({"error": f"utterance {n} never done"}))
                return 1
            await asyncio.sleep(args.gap_ms / 1000)
        await asyncio.sleep(0.3)
        _, _, snapshot = await asyncio.to_thread(caller.http, "GET", call_url)
        snapshot = json.loads(snapshot)
        reader.cancel()
    await asyncio.to_thread(caller.http, "DELETE", call_url)
    await pc.close()
    for t in tasks:
        t.cancel()

    arrival_by_ts = {}
    for p in caller.PACKETS:
        arrival_by_ts.setdefault(p["rtp_timestamp"], p["arrival_ns"])
    base_ts = caller.PACKETS[0]["rtp_timestamp"] if caller.PACKETS else 0

    def packet_arrival(pts):
        # aiortc's decoded pts is the RTP timestamp (possibly re-based); try both.
        return arrival_by_ts.get(pts) or arrival_by_ts.get((pts + base_ts) % 2**32)

    arrival_by_rtp = {p["rtp_timestamp"]: p["arrival_ns"] for p in caller.PACKETS}

    first_decoded, first_packet, done_lag = [], [], []
    ordered = sorted(flushes)
    for i, n in enumerate(ordered):
        start = flushes[n]
        end = flushes[ordered[i + 1]] if i + 1 < len(ordered) else float("inf")
        loud = [f for f in frames if start <= f[0] < end and f[2] > SILENCE_RMS]
        if not loud:
            continue
        first_decoded.append((loud[0][0] - start) / 1e6)
        arrival = packet_arrival(loud[0][1])
        if arrival:
            first_packet.append((arrival - start) / 1e6)
        first_ts = next((p["rtp_timestamp"] for p in caller.PACKETS if p["arrival_ns"] == arrival), None)
        if first_ts is not None and n in dones:
            frames_of_utterance = math.ceil((dones[n][1]["audio_ms"] * 48 + 480) / 960)
            last_ts = (first_ts + (frames_of_utterance - 1) * 960) % 2**32
            last_arrival = arrival_by_rtp.get(last_ts)
            if last_arrival:
                done_lag.append((dones[n][0] - last_arrival) / 1e6)

    arrivals = sorted(p["arrival_ns"] for p in caller.PACKETS)
    deviation = [abs((b - a) / 1e6 - 20.0) for a, b in zip(arrivals, arrivals[1:])]
    print(json.dumps({
        "utterances": len(flushes),
        "flush_to_first_audio_ms": percentiles(first_decoded),
        "flush_to_first_packet_ms": percentiles(first_packet),
        "done_after_last_frame_ms": percentiles(done_lag),
        "interarrival_dev_ms": percentiles(deviation),
        "received_audio_ms": len(caller.PACKETS) * 20,
        "sent_audio_ms": snapshot.get("frames_sent", 0) * 20,
        "underrun_frames": snapshot.get("underrun_frames"),
        "daemon_flush_to_first_audio_ms": snapshot.get("flush_to_first_audio", {}).get("mean_ms"),
        "daemon_flush_to_first_frame_ms": snapshot.get("flush_to_first_frame", {}).get("mean_ms"),
        "late_frames": snapshot.get("late_frames"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
