// Moleculer calls over NATS: the baseline of the "calls over core NATS >= 2x Moleculer" aim
// (BENCHMARKS.md). Moleculer 0.14 with its defaults (JSON serializer, the built-in balancer,
// no retries, breaker or bulkhead), the NATS transporter on the same nats-server as
// tabgrab's `nats_overhead`.
//
//   node calls.js serve [url]                      # a responder process; prints "ready"
//   node calls.js call  [url] [calls] [callers]    # prints one JSON line of figures
"use strict";
const { ServiceBroker } = require("moleculer");

const [mode = "", url = "nats://127.0.0.1:4222", callsArg = "40000", callersArg = "100"] =
  process.argv.slice(2);

function broker(nodeID) {
  return new ServiceBroker({ nodeID, transporter: url, logLevel: "warn" });
}

async function serve() {
  const b = broker(`responder-${process.pid}`);
  b.createService({
    name: "bench",
    actions: { add: (ctx) => ({ n: ctx.params.n + 1 }) },
  });
  await b.start();
  console.log("ready");
  const stop = () => b.stop().then(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function call() {
  const calls = Number(callsArg);
  const callers = Number(callersArg);
  if (!(calls > 0 && callers > 0)) {
    console.error("usage: node calls.js call [url] [calls > 0] [callers > 0]");
    process.exit(2);
  }
  const b = broker(`caller-${process.pid}`);
  await b.start();
  await b.waitForServices(["bench"], 10000);
  const run = async (total) => {
    let next = 0;
    const loop = async () => {
      while (next < total) {
        next += 1;
        const answer = await b.call("bench.add", { n: next });
        if (typeof answer.n !== "number") throw new Error(`bad answer ${JSON.stringify(answer)}`);
      }
    };
    const started = process.hrtime.bigint();
    await Promise.all(Array.from({ length: callers }, loop));
    return Number(process.hrtime.bigint() - started) / 1e9;
  };
  await run(calls); // warm-up: the same number of calls, so the JIT has compiled the path
  const seconds = await run(calls);
  console.log(
    JSON.stringify({ calls, callers, seconds, round_trips_per_s: Math.round(calls / seconds) }),
  );
  await b.stop();
}

if (mode === "serve") {
  serve().catch((e) => { console.error(e); process.exit(1); });
} else if (mode === "call") {
  call().catch((e) => { console.error(e); process.exit(1); });
} else {
  console.error("usage: node calls.js serve [url] | node calls.js call [url] [calls] [callers]");
  process.exit(2);
}
