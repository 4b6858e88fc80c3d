# Seed 004, segment=immediate example, verbatim except: the URL's host comes from RIME_WS_URL
# and the key from RIME_API_KEY (hence `import os`).
import os
import asyncio
import json
import websockets
import base64

API_KEY = os.environ["RIME_API_KEY"]
URL = f"{os.environ['RIME_WS_URL']}/ws3?speaker=astra&modelId=arcana&segment=immediate"

async def run():
    async with websockets.connect(URL, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        # Each message is already a complete phrase
        phrases = [
            "Your order has been confirmed.",
            "It will arrive within three to five business days.",
            "Is there anything else I can help you with?",
        ]
        for phrase in phrases:
            await ws.send(json.dumps({"text": phrase}))
            await asyncio.sleep(0.05)  # small delay to allow synthesis to start

        await ws.send(json.dumps({"operation": "eos"}))

        while True:
            try:
                msg = json.loads(await ws.recv())
            except websockets.exceptions.ConnectionClosedOK:
                break
            if msg["type"] == "chunk":
                audio = base64.b64decode(msg["data"])
                # stream to player...

asyncio.run(run())
