// The tasks benchmark, Node peer (bench/tasks.lua is the lasync side, tasks_baseline.c the C one).
//
//   node bench/tasks.js sleep N     N async functions, each awaiting a 10 ms timer, Promise.all
//   node bench/tasks.js trivial N   N async functions (i) => i, started with argument i,
//                                   Promise.all; checks results[i] === i
//
// Prints `wall=<seconds>`, measured from before the first task is started to after the gather
// resolves, the span bench/tasks.lua measures with async.now().
"use strict";
const { setTimeout: sleepMs } = require("node:timers/promises");

const workload = process.argv[2];
const n = Number.parseInt(process.argv[3] ?? "", 10);
if ((workload !== "sleep" && workload !== "trivial") || !(n >= 1)) {
  process.stderr.write("usage: node bench/tasks.js sleep|trivial N\n");
  process.exit(1);
}

const workloads = {
  async sleep(count) {
    const sleeper = async () => { await sleepMs(10); };
    const t0 = process.hrtime.bigint();
    const tasks = new Array(count);
    for (let i = 0; i < count; i++) tasks[i] = sleeper();
    const results = await Promise.all(tasks);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    if (results.length !== count) throw new Error("gather returned the wrong number of results");
    return wall;
  },
  async trivial(count) {
    const identity = async (i) => i;
    const t0 = process.hrtime.bigint();
    const tasks = new Array(count);
    for (let i = 0; i < count; i++) tasks[i] = identity(i + 1);
    const results = await Promise.all(tasks);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    if (results.length !== count) throw new Error("gather returned the wrong number of results");
    for (let i = 0; i < count; i++) {
      if (results[i] !== i + 1) throw new Error(`results[${i}] = ${results[i]}, expected ${i + 1}`);
    }
    return wall;
  },
};

workloads[workload](n).then((wall) => console.log(`wall=${wall.toFixed(6)}`));
