# Seed 004, segment=never example, verbatim except: the URL's host comes from RIME_WS_URL and the
# key from RIME_API_KEY (hence `import os`). It waits for messages forever; the test stops it.
import os
import asyncio
import json
import websockets
import base64

API_KEY = os.environ["RIME_API_KEY"]
URL = f"{os.environ['RIME_WS_URL']}/ws3?speaker=astra&modelId=arcana&segment=never"

async def run():
    async with websockets.connect(URL, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        # Stream an LLM response token by token
        tokens = ["Sure, ", "I'd ", "be ", "happy ", "to ", "help ", "with ", "that."]
        for token in tokens:
            await ws.send(json.dumps({"text": token}))

        # Tell Rime to synthesize everything accumulated so far
        await ws.send(json.dumps({"operation": "flush"}))

        # Receive and play audio chunks
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "chunk":
                audio = base64.b64decode(msg["data"])
                # stream audio to your player...
            elif msg["type"] == "timestamps":
                print("Timestamps:", msg["word_timestamps"])

asyncio.run(run())
