// A worker process for the SIGTERM test: one slow handler at a time, three more jobs prefetched.
import { Client, Worker } from "../dist/index.js";

const [url, queue] = process.argv.slice(2);
const worker = new Worker(new Client(url), { concurrency: 1, prefetch: 3, leaseBatchMax: 4, leaseWaitMs: 100 });
worker.handle(queue, async () => {
  process.stdout.write("started\n");
  await new Promise((r) => setTimeout(r, 500));
  process.stdout.write("finished\n");
});
await worker.run({ signals: true });
