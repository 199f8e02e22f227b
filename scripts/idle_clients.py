#!/usr/bin/env python3
"""Opens N client connections to a PostgreSQL-protocol server (user app / password app,
SCRAM-SHA-256), logs each in, and keeps them open and idle until killed.

  idle_clients.py HOST PORT N READY_FILE

Writes the number of connections logged in to READY_FILE once done. Standard library only.
"""
import asyncio
import base64
import hashlib
import hmac
import os
import struct
import sys

USER, PASSWORD, DB = b"app", "app", b"app"
_salted = {}


def startup():
    body = struct.pack("!I", 196608) + b"user\0" + USER + b"\0database\0" + DB + b"\0\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


async def read_msg(r):
    head = await r.readexactly(5)
    n = struct.unpack("!I", head[1:])[0]
    return head[:1], await r.readexactly(n - 4)


async def login(host, port):
    r, w = await asyncio.open_connection(host, port)
    w.write(startup())
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    auth_msg_prefix = None
    server_key = None
    while True:
        tag, body = await read_msg(r)
        if tag == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 10:  # SASL
                data = ("n,," + first_bare).encode()
                w.write(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(data)) + data))
            elif code == 11:  # SASL continue
                server_first = body[4:].decode()
                attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                salt, iters = base64.b64decode(attrs["s"]), int(attrs["i"])
                key = (salt, iters)
                if key not in _salted:
                    _salted[key] = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iters)
                salted = _salted[key]
                client_key = hmac.new(salted, b"Client Key", "sha256").digest()
                server_key = hmac.new(salted, b"Server Key", "sha256").digest()
                stored = hashlib.sha256(client_key).digest()
                without_proof = f"c=biws,r={attrs['r']}"
                auth_msg_prefix = f"{first_bare},{server_first},{without_proof}".encode()
                sig = hmac.new(stored, auth_msg_prefix, "sha256").digest()
                proof = bytes(a ^ b for a, b in zip(client_key, sig))
                w.write(msg(b"p", f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
            elif code in (0, 12):
                pass
            else:
                raise RuntimeError(f"unsupported auth {code}")
        elif tag == b"E":
            raise RuntimeError(body)
        elif tag == b"Z":
            return r, w


async def main(host, port, n, ready):
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            try:
                conns.append(await login(host, port))
            except Exception as e:  # noqa: BLE001 - count what worked
                print(f"login failed: {e}", file=sys.stderr)

    await asyncio.gather(*(one() for _ in range(n)))
    with open(ready, "w") as f:
        f.write(str(len(conns)))
    await asyncio.sleep(3600)


if __name__ == "__main__":
    h, p, n, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    asyncio.run(main(h, p, n, ready))
