# Seed 002 (Rime's /ws example), verbatim except: the URL's host comes from RIME_WS_URL and the
# key from RIME_API_KEY (hence `import os`).
import os
import asyncio
import websockets

class RimeClient:
    def __init__(self, speaker, api_key):
        self.url = f"{os.environ['RIME_WS_URL']}/ws?speaker={speaker}&modelId=mistv3&audioFormat=mp3"
        self.auth_headers = {
            "Authorization": f"Bearer {api_key}"
        }
        self.audio_data = b''

    async def send_tokens(self, websocket, message):
        for token in message:
            await websocket.send(token)

    async def handle_audio(self, websocket):
        while True:
            try:
                audio = await websocket.recv()
            except websockets.exceptions.ConnectionClosedOK:
                break
            self.audio_data += audio

    async def run(self, message):
        async with websockets.connect(self.url, additional_headers=self.auth_headers) as websocket:
            await asyncio.gather(
                self.send_tokens(websocket, message),
                self.handle_audio(websocket),
            )

    def save_audio(self, file_path):
        with open(file_path, 'wb') as f:
            f.write(self.audio_data)

message = [
    "This ",
    "is ",
    "a ",
    "sentence, ",
    "that ",
    "will ",
    "produce ",
    "audio.",
    "<EOS>",
]

client = RimeClient("cove", api_key=os.environ["RIME_API_KEY"])
asyncio.run(client.run(message))

client.save_audio("output.mp3")
