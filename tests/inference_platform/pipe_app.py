"""An RSGI application that streams a body through ``PipeBody`` under the real granian
(tests/inference_platform/test_front.py): GET /body streams SIZE bytes in CHUNK-sized chunks;
GET /written says how many bytes this process has written so far to the pipe and how many
bodies it has ended."""

from inference_platform.protocols import PipeBody

SIZE = 32 * 1024 * 1024
CHUNK = 64 * 1024


class App:
    def __init__(self) -> None:
        self.written = 0
        self.ended = 0

    async def __rsgi__(self, scope, protocol) -> None:
        if scope.path == "/written":
            protocol.response_bytes(200, [], f"{self.written} {self.ended}".encode())
            return
        self.written = 0
        headers = [("content-type", "application/octet-stream"), ("content-length", str(SIZE))]
        body = await PipeBody.open(protocol, 200, headers)
        for n in range(SIZE // CHUNK):
            await body.write(bytes([n % 256]) * CHUNK)
            if not body.gone:
                self.written += CHUNK
        await body.end()
        self.ended += 1


app = App()
