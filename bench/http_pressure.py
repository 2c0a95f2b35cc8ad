#!/usr/bin/env python3
"""HTTP pressure on a running agent from many loopback addresses, measured from outside.

  bench/http_pressure.py slow --pid PID --addr 127.0.0.1:8500 [--seconds 100]
      6 addresses x 190 connections, each sending a request body one byte every 10 s
      (and reconnecting when cut), while a client from another address asks
      /v1/status/leader every 2 s: that client's waits, what the attackers were told,
      the agent's RSS before, at peak and after.

  bench/http_pressure.py blocking --pid PID --addr 127.0.0.1:8500 --queries 2000
      that many blocking queries on /v1/catalog/services (200 per address, retried after
      a 429 or a connection closed unanswered, as watch clients do): the agent's RSS with
      them held, a new client's waits, and the time until one write has woken them all.

Add --malloc-stats to have gdb print glibc's malloc_stats() of the agent (into the
agent's stderr) while the queries are held and after the run: "in use bytes" against
"system bytes" tells live memory from what the allocator keeps. The client is Python on
the same machine, so the wake-up time includes its own time to read every answer.
"""
import argparse
import asyncio
import collections
import statistics
import subprocess
import time

SLOW_HEAD = b"PUT /v1/catalog/register HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1.0


def malloc_stats(pid):
    subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (void)malloc_stats()"],
        capture_output=True,
        timeout=60,
    )


def status_of(data):
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"


async def get(src, host, port, path, timeout):
    r, w = await asyncio.open_connection(host, port, local_addr=(src, 0))
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await w.drain()
        return await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()


async def slow_body(src, host, port, stop, told):
    while not stop.is_set():
        w = None
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=(src, 0))
            w.write(SLOW_HEAD)
            await w.drain()
            while not stop.is_set():
                w.write(b" ")
                await w.drain()
                try:
                    told[status_of(await asyncio.wait_for(r.read(4096), 10))] += 1
                    break
                except asyncio.TimeoutError:
                    continue
        except OSError:
            # Mostly the attacker's own ephemeral ports running out, or a write after
            # the agent closed the connection.
            told["connection error"] += 1
        finally:
            if w is not None:
                w.close()
        await asyncio.sleep(0.1)


async def victim(src, host, port, stop, waits):
    while not stop.is_set():
        started = time.monotonic()
        try:
            status = status_of(await get(src, host, port, "/v1/status/leader", 120))
        except (asyncio.TimeoutError, OSError) as e:
            status = f"failed: {e!r}"
        waits.append((time.monotonic() - started, status))
        await asyncio.sleep(2)


async def slow(args, host, port):
    stop = asyncio.Event()
    told = collections.Counter()
    waits = []
    print(f"rss before: {rss_mib(args.pid):.1f} MiB")
    tasks = [
        asyncio.create_task(slow_body(f"127.0.0.{a}", host, port, stop, told))
        for a in range(2, 8)
        for _ in range(190)
    ]
    await asyncio.sleep(5)
    tasks.append(asyncio.create_task(victim("127.0.0.50", host, port, stop, waits)))
    peak = 0.0
    for _ in range(args.seconds):
        await asyncio.sleep(1)
        peak = max(peak, rss_mib(args.pid))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    secs = [w for w, _ in waits]
    print(f"victim: {len(waits)} requests, {dict(collections.Counter(s for _, s in waits))}")
    print(f"victim wait: median {statistics.median(secs) * 1000:.0f} ms, max {max(secs) * 1000:.0f} ms")
    print(f"attackers were told: {dict(told)}")
    print(f"rss at peak: {peak:.1f} MiB")
    await asyncio.sleep(5)
    print(f"rss 5 s after: {rss_mib(args.pid):.1f} MiB")
    if args.malloc_stats:
        malloc_stats(args.pid)


async def held_query(src, host, port, path, state, woke):
    for _ in range(1000):
        w = None
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=(src, 0))
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            await w.drain()
            state["waiting"] += 1
            data = await r.read()
            state["waiting"] -= 1
            status = status_of(data)
            if status == "closed" or " 429 " in status:
                state["retried"] += 1
                await asyncio.sleep(0.2)
                continue
            woke.append(time.monotonic())
            return
        except OSError:
            await asyncio.sleep(0.2)
        finally:
            if w is not None:
                w.close()


async def blocking(args, host, port):
    n = args.queries
    data = await get("127.0.0.1", host, port, "/v1/catalog/services", 10)
    index = next(
        int(line.split(b":")[1])
        for line in data.split(b"\r\n")
        if line.lower().startswith(b"x-consul-index")
    )
    path = f"/v1/catalog/services?index={index}&wait=5m"
    print(f"rss before: {rss_mib(args.pid):.1f} MiB")
    state = collections.Counter()
    woke = []
    tasks = [
        asyncio.create_task(held_query(f"127.0.0.{2 + i // 200}", host, port, path, state, woke))
        for i in range(n)
    ]
    started = time.monotonic()
    while state["waiting"] < n and time.monotonic() - started < 60:
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)
    print(f"held: {state['waiting']} of {n} ({state['retried']} retried after a 429 or a close)")
    print(f"rss with them held: {rss_mib(args.pid):.1f} MiB")
    if args.malloc_stats:
        malloc_stats(args.pid)
    waits = []
    for _ in range(5):
        t = time.monotonic()
        status = status_of(await get("127.0.0.250", host, port, "/v1/status/leader", 60))
        waits.append(f"{(time.monotonic() - t) * 1000:.1f} ms ({status})")
    print("new client's waits: " + ", ".join(waits))
    body = '{"Node": "wake", "Address": "10.9.9.9", "Service": {"Service": "wake", "Port": 1}}'
    r, w = await asyncio.open_connection(host, port)
    t0 = time.monotonic()
    w.write(
        (
            "PUT /v1/catalog/register HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    await w.drain()
    await r.read()
    w.close()
    while len(woke) < n and time.monotonic() - t0 < 60:
        await asyncio.sleep(0.01)
    if woke:
        print(f"woken: {len(woke)} of {n}, the last {max(woke) - t0:.3f} s after the write")
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(5)
    print(f"rss 5 s after: {rss_mib(args.pid):.1f} MiB")
    if args.malloc_stats:
        malloc_stats(args.pid)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["slow", "blocking"])
    parser.add_argument("--pid", type=int, required=True, help="the agent's process id")
    parser.add_argument("--addr", required=True, help="the agent's HTTP address")
    parser.add_argument("--seconds", type=int, default=100)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--malloc-stats", action="store_true")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    run = slow if args.mode == "slow" else blocking
    asyncio.run(run(args, host, int(port)))


main()
