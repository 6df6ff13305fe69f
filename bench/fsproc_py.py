# The files and processes workloads in Python asyncio (bench/run's peers), same arguments as
# fsproc.lua: aiofiles for files, asyncio.create_subprocess_exec for processes.
import asyncio
import sys
import time

import aiofiles


async def workers(n, inflight, job):
    counter = [0]

    async def one():
        while counter[0] < n:
            counter[0] += 1
            await job(counter[0])

    await asyncio.gather(*(one() for _ in range(inflight)))


async def main(mode, args):
    if mode == "read":
        d, n, inflight = args[0], int(args[1]), int(args[2])
        total = [0]

        async def job(i):
            async with aiofiles.open(f"{d}/f{i}", "rb") as f:
                data = await f.read()
                total[0] += len(data)

        await workers(n, inflight, job)
        assert total[0] == n * 4096, total[0]
    elif mode == "copy":
        chunk = int(args[2])
        async with aiofiles.open(args[0], "rb") as src, aiofiles.open(args[1], "wb") as dst:
            while True:
                data = await src.read(chunk)
                if not data:
                    break
                await dst.write(data)
    elif mode == "true":
        async def job(_):
            p = await asyncio.create_subprocess_exec("/bin/true")
            assert await p.wait() == 0

        await workers(int(args[0]), int(args[1]), job)
    else:
        raise SystemExit("usage: read DIR N INFLIGHT | copy SRC DST CHUNK | true N INFLIGHT")


t0 = time.perf_counter()
asyncio.run(main(sys.argv[1], sys.argv[2:]))
print(f"wall={time.perf_counter() - t0:.6f}")
