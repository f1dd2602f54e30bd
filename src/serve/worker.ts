/**
 * The model worker thread: owns the Model (whose session runs block this thread, not the server's event
 * loop), runs one batch at a time and streams every step back to the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EmlensError } from '../errors.js';
import { loadModel, type Model } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { runBatch, serverDecoder, tokenBytesOf } from './batch.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';

const port = parentPort!; // this module runs only as the engine's worker thread
const post = (m: FromWorker) => port.postMessage(m);

async function start(init: WorkerInit): Promise<void> {
  let model: Model;
  try {
    model = await loadModel(init.dir, {
      ...init.load,
      onProgress: (message) => post({ type: 'progress', message }),
    });
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message, user: e instanceof EmlensError });
    return;
  }
  const tokenizer = await loadTokenizer(init.dir);
  const decoder = serverDecoder(tokenizer);
  const bytesOf = await tokenBytesOf(init.dir, tokenizer);
  const cancelled = new Set<number>();
  let queue = Promise.resolve();

  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'cancel') {
      cancelled.add(msg.job);
      return;
    }
    if (msg.type === 'close') {
      queue = queue.then(async () => {
        await model.dispose();
        process.exit(0); // in a worker thread this ends the thread only
      });
      return;
    }
    queue = queue.then(async () => {
      const t0 = performance.now();
      try {
        await runBatch(model, decoder, bytesOf, msg.jobs, msg.interventions, msg.positions, {
          cancelled: (job) => cancelled.has(job),
          onStep: (tokens, finished) => post({ type: 'step', batch: msg.id, tokens, finished }),
          yieldNow: () => new Promise((resolve) => setImmediate(resolve)),
        });
        post({ type: 'done', batch: msg.id, ms: performance.now() - t0 });
      } catch (e) {
        post({
          type: 'done',
          batch: msg.id,
          ms: performance.now() - t0,
          error: { message: (e as Error).message, user: e instanceof EmlensError },
        });
      } finally {
        for (const job of msg.jobs) cancelled.delete(job.id);
      }
    });
  });

  const { spec } = model;
  post({
    type: 'ready',
    maxPositions: model.maxPositions,
    numLayers: spec.numLayers,
    dModel: spec.dModel,
    vocabSize: spec.vocabSize,
    eosTokenIds: [...spec.eosTokenIds],
  });
}

start((workerData as { init: WorkerInit }).init).catch((e: unknown) => {
  post({ type: 'fatal', message: (e as Error).message, user: e instanceof EmlensError });
});
