# The endpoint side of the guest network tests (GuestNetTests, SwitchGuestTests): an HTTP server
# on ADDRESS:8080 whose GET /blob sends 4 MiB of a fixed pattern and whose POST /upload answers
# the MD5 of the body. Prints "blob MD5" at start and "upload BYTES MD5" per upload.
#   python3 blob-server.py ADDRESS
import hashlib, http.server, sys

blob = bytes((i * 31 + (i >> 12)) & 0xFF for i in range(4 << 20))
print("blob", hashlib.md5(blob).hexdigest(), flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        body = self.rfile.read(n)
        digest = hashlib.md5(body).hexdigest().encode()
        print("upload", n, digest.decode(), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", str(len(digest)))
        self.end_headers()
        self.wfile.write(digest)

    def log_message(self, *args):
        pass


http.server.HTTPServer((sys.argv[1], 8080), Handler).serve_forever()
