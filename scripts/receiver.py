#!/usr/bin/env python3
"""A tiny HTTP receiver for the README tour: prints every request it gets.

    python3 scripts/receiver.py 9000
"""
import http.server
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        ce = {k: v for k, v in self.headers.items() if k.lower().startswith("ce-") or k.lower() in ("content-type", "traceparent")}
        print(f"{self.command} {self.path}")
        for k, v in ce.items():
            print(f"  {k}: {v}")
        print(f"  body: {body.decode('utf-8', 'replace')}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
print(f"listening on http://127.0.0.1:{port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
