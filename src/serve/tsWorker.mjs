// Runs the TypeScript worker from source (tests, tsx): registers tsx's loader in this thread, then imports it.
// The compiled package starts dist/serve/worker.js directly and never loads this file.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.entry);
