# Seed 004, segment=bySentence example, verbatim except: the URL's host comes from RIME_WS_URL
# and the key from RIME_API_KEY (hence `import os`).
import os
import asyncio
import json
import websockets
import base64

API_KEY = os.environ["RIME_API_KEY"]
# segment=bySentence is the default, but shown explicitly here for clarity
URL = f"{os.environ['RIME_WS_URL']}/ws3?speaker=cove&modelId=mistv2&segment=bySentence"

async def run():
    async with websockets.connect(URL, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        sentences = [
            "The weather today is sunny. ",
            "Temperatures will reach the mid-seventies. ",
            "Enjoy the sunshine!",
        ]
        for sentence in sentences:
            await ws.send(json.dumps({"text": sentence}))

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
