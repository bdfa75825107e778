#!/usr/bin/env python3
"""A small, independent client of the Twilio Media Streams protocol, for
Izwi's stress tests. Written from Twilio's documentation, not from Izwi.

    stream_client.py bad URL [--param k=v ...]
        One connection per case of bad input, in sequence. Prints one JSON
        line per case: {"case", "close_code", "close_reason"}; close_code is
        null when no close frame came within 5 s (or the connection broke
        without one).

    stream_client.py load URL N SECONDS --tokens FILE [--param k=v ...]
        N concurrent streams of a 400 Hz tone, paced every 20 ms against
        absolute deadlines, counting the media frames that come back. Prints
        one JSON object: {"streams", "completed", "min_received_ratio",
        "errors", ...}. FILE has a line "CALLSID TOKEN" per stream: a token
        opens one stream only, that of the call it was issued for.

Parameters (--param) go into start.customParameters, as the <Parameter>s of
the TwiML would; the `token` among them is what authorises a stream.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import uuid

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

RATE = 8000
FRAME = 160  # 20 ms of 8 kHz µ-law
FRAME_S = 0.020
CLOSE_WAIT_S = 5.0


# --------------------------------------------------------------------------
# Audio


def mulaw_encode(x: np.ndarray) -> bytes:
    """G.711 µ-law of float samples in [-1, 1] (the ITU segment encoder)."""
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0x00)
    mag = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def tone_frame(freq: float = 400.0, level: float = 0.3) -> str:
    """One 20 ms frame of the tone, base64. 400 Hz is exactly 8 periods per
    frame at 8 kHz, so every frame is the same and the tone is continuous."""
    t = np.arange(FRAME) / RATE
    return base64.b64encode(mulaw_encode(level * np.sin(2 * np.pi * freq * t))).decode()


# --------------------------------------------------------------------------
# Frames, as Twilio sends them


def sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


class Stream:
    def __init__(self, params: dict[str, str]):
        self.stream_sid = sid("MZ")
        self.call_sid = params.get("callSid") or sid("CA")
        self.params = params
        self.seq = 0
        self.chunk = 0

    def _next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    def start(self, params: dict[str, str] | None = None) -> str:
        return json.dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": "ACtest",
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.params if params is None else params,
                    "mediaFormat": {
                        "encoding": "audio/x-mulaw",
                        "sampleRate": RATE,
                        "channels": 1,
                    },
                },
                "streamSid": self.stream_sid,
            }
        )

    def media(self, payload_b64: str) -> str:
        self.chunk += 1
        return json.dumps(
            {
                "event": "media",
                "sequenceNumber": self._next_seq(),
                "media": {
                    "track": "inbound",
                    "chunk": str(self.chunk),
                    "timestamp": str((self.chunk - 1) * 20),
                    "payload": payload_b64,
                },
                "streamSid": self.stream_sid,
            }
        )

    def mark(self, name: str) -> str:
        return json.dumps(
            {
                "event": "mark",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    def stop(self) -> str:
        return json.dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "stop": {"accountSid": "ACtest", "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )


def open_ws(url: str):
    # No proxy from the environment, no compression (Izwi negotiates none
    # anyway), no keepalive pings muddying the frame counts.
    return connect(
        url,
        proxy=None,
        compression=None,
        ping_interval=None,
        open_timeout=10,
        close_timeout=CLOSE_WAIT_S,
    )


# --------------------------------------------------------------------------
# bad: one connection per kind of bad input


async def await_close(ws) -> tuple[int | None, str]:
    """Reads until Izwi's close frame (or CLOSE_WAIT_S); what it said."""
    try:
        async with asyncio.timeout(CLOSE_WAIT_S):
            while True:
                await ws.recv()
    except ConnectionClosed as e:
        if e.rcvd is not None:
            return e.rcvd.code, e.rcvd.reason
        return None, f"connection closed without a close frame ({e})"
    except TimeoutError:
        return None, f"no close frame within {CLOSE_WAIT_S} s"


async def send_all(ws, frames) -> str | None:
    """Sends frames until the connection closes; the error, if any."""
    try:
        for f in frames:
            await ws.send(f)
    except ConnectionClosed as e:
        return str(e)
    return None


async def bad_case(url: str, params: dict[str, str], case: str) -> dict:
    s = Stream(params)
    payload = tone_frame()
    plan: list = {
        "malformed_json": ['{"event": "media", "media": {'],
        "not_an_object": ["[1,2]"],
        "unknown_event": [
            connected(),
            json.dumps(
                {
                    "event": "transcription",
                    "sequenceNumber": "1",
                    "streamSid": s.stream_sid,
                    "transcription": {"text": "hello"},
                }
            ),
        ],
        "bad_base64": [connected(), s.start(), s.media("!!!not base64")],
        "media_before_start": [connected(), s.media(payload)],
        "oversized_frame": [connected(), s.start(), "x" * 200_000],
        "flood": [connected(), s.start()] + [s.media(payload) for _ in range(2000)],
        "binary_frame": [connected(), s.start(), bytes(range(256)) * 4],
        "second_start": [connected(), s.start(), s.media(payload), s.start()],
        "unauthorized": [
            connected(),
            s.start({k: v for k, v in params.items() if k != "token"}),
        ],
        "unauthorized_wrong_token": [
            connected(),
            s.start({**params, "token": f"{int(time.time())}.{'0' * 64}"}),
        ],
    }[case]
    result: dict = {"case": case, "close_code": None, "close_reason": ""}
    try:
        async with open_ws(url) as ws:
            reader = asyncio.create_task(await_close(ws))
            # Let the reader see the close even while frames are still going out.
            send_error = await send_all(ws, plan)
            code, reason = await reader
            result.update(close_code=code, close_reason=reason)
            if send_error is not None:
                result["send_error"] = send_error
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        result["close_reason"] = f"client error: {type(e).__name__}: {e}"
    return result


BAD_CASES = [
    "malformed_json",
    "not_an_object",
    "unknown_event",
    "bad_base64",
    "media_before_start",
    "oversized_frame",
    "flood",
    "binary_frame",
    "second_start",
    "unauthorized",
    "unauthorized_wrong_token",
]


async def bad(url: str, params: dict[str, str], cases: list[str]) -> None:
    for case in cases:
        print(json.dumps(await bad_case(url, params, case)), flush=True)


# --------------------------------------------------------------------------
# load: N paced streams at once


async def one_stream(url: str, params: dict[str, str], seconds: float, idx: int, t0: float) -> dict:
    s = Stream(params)
    out = {
        "stream": idx,
        "sent": 0,
        "received": 0,
        "completed": False,
        "close_code": None,
        "late_ms_max": 0.0,
        "error": None,
    }
    payload = tone_frame()
    frames = int(round(seconds / FRAME_S))
    loop = asyncio.get_running_loop()
    try:
        async with open_ws(url) as ws:

            async def receive() -> None:
                try:
                    async for msg in ws:
                        if isinstance(msg, bytes):
                            raise RuntimeError("binary frame from Izwi")
                        ev = json.loads(msg)
                        if ev.get("event") == "media":
                            out["received"] += 1
                        elif ev.get("event") == "mark":
                            # Twilio echoes a mark once the audio before it has played.
                            await ws.send(s.mark(ev["mark"]["name"]))
                except ConnectionClosed:
                    pass
                rcvd = ws.protocol.close_rcvd
                out["close_code"] = rcvd.code if rcvd is not None else None

            reader = asyncio.create_task(receive())
            await ws.send(connected())
            await ws.send(s.start())
            # Absolute deadlines: frame i goes at start + i * 20 ms, however
            # long the previous sends took.
            start = loop.time()
            for i in range(frames):
                deadline = start + i * FRAME_S
                ahead = deadline - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                late = loop.time() - deadline
                out["late_ms_max"] = max(out["late_ms_max"], late * 1000)
                await ws.send(s.media(payload))
                out["sent"] += 1
            # Let the echo of the last frames arrive, as the rest of a call would.
            await asyncio.sleep(0.2)
            await ws.send(s.stop())
            # After stop Twilio closes the socket; Izwi may close first.
            try:
                await asyncio.wait_for(asyncio.shield(reader), CLOSE_WAIT_S)
            except TimeoutError:
                await ws.close()
                await reader
            out["completed"] = out["sent"] == frames
    except Exception as e:  # noqa: BLE001 - reported
        out["error"] = f"stream {idx}: {type(e).__name__}: {e}"
    out["seconds"] = round(loop.time() - t0, 3)
    return out


async def load(url: str, params: dict[str, str], n: int, seconds: float, tokens: list[tuple[str, str]]) -> None:
    if len(tokens) < n:
        sys.exit(f"{n} streams need {n} tokens, got {len(tokens)}")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = await asyncio.gather(
        *(
            one_stream(url, {**params, "callSid": tokens[i][0], "token": tokens[i][1]}, seconds, i, t0)
            for i in range(n)
        )
    )
    ratios = [r["received"] / r["sent"] if r["sent"] else 0.0 for r in results]
    summary = {
        "streams": n,
        "completed": sum(1 for r in results if r["completed"] and r["error"] is None),
        "min_received_ratio": round(min(ratios), 4) if ratios else 0.0,
        "sent": sum(r["sent"] for r in results),
        "received": sum(r["received"] for r in results),
        "max_late_ms": round(max((r["late_ms_max"] for r in results), default=0.0), 1),
        "close_codes": sorted({str(r["close_code"]) for r in results}),
        "wall_s": round(loop.time() - t0, 2),
        "errors": [r["error"] for r in results if r["error"]],
    }
    print(json.dumps(summary), flush=True)


# --------------------------------------------------------------------------


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            sys.exit(f"--param wants KEY=VALUE, not {item!r}")
        params[k] = v
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bad", help="one connection per kind of bad input")
    b.add_argument("url")
    b.add_argument("--param", action="append", default=[])
    b.add_argument("--case", action="append", choices=BAD_CASES, help="only these cases")
    ld = sub.add_parser("load", help="N concurrent paced streams")
    ld.add_argument("url")
    ld.add_argument("n", type=int)
    ld.add_argument("seconds", type=float)
    ld.add_argument("--param", action="append", default=[])
    ld.add_argument("--tokens", required=True, help='a file of "CALLSID TOKEN" lines, one per stream')
    args = ap.parse_args()
    params = parse_params(args.param)
    if args.cmd == "bad":
        asyncio.run(bad(args.url, params, args.case or BAD_CASES))
    else:
        with open(args.tokens, encoding="utf-8") as f:
            tokens = [tuple(line.split()) for line in f if line.strip()]
        asyncio.run(load(args.url, params, args.n, args.seconds, tokens))


if __name__ == "__main__":
    main()
