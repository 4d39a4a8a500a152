"""A Twilio Media Streams bot built the way pipecat's Twilio examples build one: a FastAPI
WebSocket endpoint, pipecat's `parse_telephony_websocket` to read Twilio's `connected`/`start`,
`TwilioFrameSerializer` for the wire format, `FastAPIWebsocketTransport`, and a pipeline run by
`PipelineRunner`. Nothing in it knows about voxgate.

The bot plays 2 s of a 1 kHz tone as soon as the pipeline starts and listens to the caller. The
test's caller (SIPp with -rtp_echo) sends back everything it hears, so the tone comes back
through voxgate as inbound Twilio `media`. Once the bot has heard 400 ms of its own tone it
ends the pipeline (the transport closes the WebSocket: the stream, and the call, end).

    python pipecat_twilio_bot.py --port 0 --result result.json --port-file port.txt

The port it listens on is written to --port-file; what it saw is written to --result.
"""

import argparse
import asyncio
import json
import math
import socket
import struct
import time

import uvicorn
from fastapi import FastAPI, WebSocket

from pipecat.frames.frames import (
    EndTaskFrame,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

RATE = 16000
TONE_HZ = 1000.0


def tone(seconds: float) -> bytes:
    n = int(seconds * RATE)
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * TONE_HZ * i / RATE))) for i in range(n)
    )


def tone_share(pcm: bytes, rate: int) -> float:
    """Goertzel power at TONE_HZ over the frame's total power (0..1)."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2])
    if not samples:
        return 0.0
    k = 2 * math.cos(2 * math.pi * TONE_HZ / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    total = sum(x * x for x in samples) * len(samples) / 2
    return power / total if total > 1e3 * len(samples) else 0.0


class ToneBot(FrameProcessor):
    def __init__(self, result: dict):
        super().__init__()
        self.result = result
        self.ended = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self.push_frame(
                OutputAudioRawFrame(audio=tone(2.0), sample_rate=RATE, num_channels=1)
            )
            self.result["tone_sent_at"] = time.time()
        elif isinstance(frame, InputAudioRawFrame):
            self.result["audio_frames_in"] += 1
            self.result["audio_ms_in"] += len(frame.audio) * 1000 // (2 * frame.sample_rate)
            if tone_share(frame.audio, frame.sample_rate) > 0.5:
                self.result["tone_ms_heard"] += len(frame.audio) * 1000 // (2 * frame.sample_rate)
            if self.result["tone_ms_heard"] >= 400 and not self.ended:
                self.ended = True
                self.result["ended_at"] = time.time()
                # pipecat's way for a processor to end the task: the transport then closes
                # the WebSocket.
                await self.push_frame(EndTaskFrame(), FrameDirection.UPSTREAM)
        else:
            await self.push_frame(frame, direction)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--result", required=True)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()

    result = {"audio_frames_in": 0, "audio_ms_in": 0, "tone_ms_heard": 0}
    app = FastAPI()

    @app.websocket("/media")
    async def media(websocket: WebSocket):
        result["signature"] = websocket.headers.get("x-twilio-signature")
        await websocket.accept()
        transport_type, call_data = await parse_telephony_websocket(websocket)
        result["transport_type"] = transport_type
        result["stream_id"] = call_data["stream_id"]
        result["call_id"] = call_data["call_id"]
        result["body"] = call_data.get("body", {})
        serializer = TwilioFrameSerializer(
            stream_sid=call_data["stream_id"],
            call_sid=call_data["call_id"],
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
            ),
        )
        bot = ToneBot(result)
        pipeline = Pipeline([transport.input(), bot, transport.output()])
        task = PipelineTask(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        )
        await PipelineRunner(handle_sigint=False).run(task)
        result["pipeline_done"] = True
        with open(args.result, "w") as f:
            json.dump(result, f)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    with open(args.port_file, "w") as f:
        f.write(str(sock.getsockname()[1]))
    config = uvicorn.Config(app, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
