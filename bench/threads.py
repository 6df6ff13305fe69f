#!/usr/bin/env python3
"""The thread-pool workloads of bench/threads.lua with Python's asyncio.to_thread (the peer).

  python3 bench/threads.py jobs N INFLIGHT | cpu SECONDS | table BYTES
Each prints wall=<seconds>, timed the same way as bench/threads.lua.
"""
import asyncio
import sys
import time


def identity(x):
    return x


def count(n):
    x = 0
    for i in range(1, n + 1):
        x += i
    return x


def calibrate(seconds):
    n = 100000
    while True:
        took = float("inf")
        for _ in range(3):  # the quickest of three: a loaded machine only makes it slower
            t0 = time.perf_counter()
            count(n)
            took = min(took, time.perf_counter() - t0)
        if took > 0.05:
            return int(n * seconds / took)
        n *= 2


async def warm():
    await asyncio.gather(*(asyncio.to_thread(count, 10000) for _ in range(8)))


async def main(mode, args):
    if mode == "jobs":
        n, inflight = int(args[0]), int(args[1])
        await warm()
        taken = 0

        async def worker():
            nonlocal taken
            while taken < n:
                taken += 1
                i = taken
                assert await asyncio.to_thread(identity, i) == i

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        wall = time.perf_counter() - t0
        print("jobs=%d inflight=%d per_job_us=%.2f" % (n, inflight, wall / n * 1e6))
    elif mode == "cpu":
        n = calibrate(float(args[0]))
        await warm()
        t0 = time.perf_counter()
        await asyncio.gather(asyncio.to_thread(count, n), asyncio.to_thread(count, n))
        wall = time.perf_counter() - t0
    elif mode == "table":
        size = int(args[0])
        # Records like bench/threads.lua's; Python shares them with the thread: nothing is copied.
        big = [{"id": i, "name": "record %d" % i, "score": i * 0.5} for i in range(size // 100)]
        await warm()
        rounds = 20
        t0 = time.perf_counter()
        for _ in range(rounds):
            assert len(await asyncio.to_thread(identity, big)) == len(big)
        wall = (time.perf_counter() - t0) / rounds
    else:
        sys.exit("usage: threads.py jobs N INFLIGHT | cpu SECONDS | table BYTES")
    print("wall=%.6f" % wall)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
