// The files and processes workloads in Node (bench/run's peers), same arguments as fsproc.lua:
// fs/promises readFile and FileHandle read/write, child_process.execFile.
import { readFile, open } from "node:fs/promises";
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const [mode, ...args] = process.argv.slice(2);
const run = promisify(execFile);

async function workers(n, inflight, job) {
  let next = 0;
  const one = async () => { while (next < n) { next += 1; await job(next); } };
  await Promise.all(Array.from({ length: inflight }, one));
}

const t0 = process.hrtime.bigint();
if (mode === "read") {
  const [dir, n, inflight] = [args[0], Number(args[1]), Number(args[2])];
  let bytes = 0;
  await workers(n, inflight, async (i) => { const b = await readFile(`${dir}/f${i}`); bytes += b.length; });
  if (bytes !== n * 4096) throw new Error(`read ${bytes} bytes`);
} else if (mode === "copy") {
  const chunk = Number(args[2]);
  const src = await open(args[0], "r"), dst = await open(args[1], "w");
  const buf = Buffer.allocUnsafe(chunk);
  for (;;) {
    const { bytesRead } = await src.read(buf, 0, chunk, null);
    if (bytesRead === 0) break;
    let off = 0;
    while (off < bytesRead) off += (await dst.write(buf, off, bytesRead - off)).bytesWritten;
  }
  await src.close(); await dst.close();
} else if (mode === "true") {
  await workers(Number(args[0]), Number(args[1]), async () => { await run("/bin/true"); });
} else {
  throw new Error("usage: read DIR N INFLIGHT | copy SRC DST CHUNK | true N INFLIGHT");
}
console.log(`wall=${Number(process.hrtime.bigint() - t0) / 1e9}`);
