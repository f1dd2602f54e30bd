/** A judge that is a model loaded by emlens, scored over its own vocabulary. */
import { EmlensError } from '../../errors.js';
import { topKIndices } from '../../generate/sampling.js';
import { type LoadModelOptions, loadModel, type Model } from '../../model/model.js';
import { encodeChat } from '../../text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../../text/tokenizer.js';
import { JUDGE_TOP_LOGPROBS, scoreFromLogprobs, type TokenLogprob } from './scoreRule.js';
import type { Judge } from './types.js';

export interface LocalJudgeOptions extends LoadModelOptions {
  /** Prompts scored in one forward pass (default 8). */
  readonly batchSize?: number;
}

/**
 * A judge that is a model loaded by emlens: the prompt is rendered with the model's chat template (with the
 * generation prompt), one forward pass gives the next-token logits, and the score is
 * {@link scoreFromLogprobs} over the 20 most likely tokens of its vocabulary, each decoded on its own.
 * Concurrent `score` calls are batched into one forward pass.
 *
 * @example
 * const judge = await loadLocalJudge('models/Qwen2.5-7B-Instruct');
 * await judge.score(prompt);
 * await judge.close();
 */
export class LocalJudge implements Judge {
  readonly name: string;
  private readonly queue: {
    ids: number[];
    resolve: (v: TokenLogprob[]) => void;
    reject: (e: unknown) => void;
  }[] = [];
  private running = false;
  private readonly batchSize: number;

  constructor(
    readonly model: Model,
    readonly tokenizer: TextTokenizer,
    opts: { readonly name?: string; readonly batchSize?: number } = {},
  ) {
    this.name = opts.name ?? `local:${model.dir}`;
    this.batchSize = opts.batchSize ?? 8;
    if (!Number.isInteger(this.batchSize) || this.batchSize <= 0) {
      throw new EmlensError(`The judge batch size must be a positive integer, not ${this.batchSize}.`);
    }
  }

  async score(prompt: string): Promise<number | null> {
    return scoreFromLogprobs(await this.topLogprobs(prompt));
  }

  /** The 20 most likely next tokens (decoded) with their log probabilities, best first. */
  topLogprobs(prompt: string): Promise<TokenLogprob[]> {
    const ids = encodeChat(this.tokenizer, [{ role: 'user', content: prompt }], {
      addGenerationPrompt: true,
    });
    return new Promise((resolve, reject) => {
      this.queue.push({ ids, resolve, reject });
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.batchSize);
        try {
          const r = await this.model.forward(batch.map((b) => b.ids));
          const vocab = this.model.spec.vocabSize;
          batch.forEach((b, i) => {
            b.resolve(this.top(r.logits.data.subarray(i * vocab, (i + 1) * vocab)));
          });
        } catch (e) {
          for (const b of batch) b.reject(e);
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** Softmax (float64) of one row of logits, then the top tokens decoded. */
  private top(logits: Float32Array): TokenLogprob[] {
    let max = Number.NEGATIVE_INFINITY;
    for (const x of logits) if (x > max) max = x;
    let z = 0;
    for (const x of logits) z += Math.exp(x - max);
    const logZ = max + Math.log(z);
    return [...topKIndices(logits, JUDGE_TOP_LOGPROBS)].map((id) => ({
      token: this.tokenizer.decode([id], { skipSpecialTokens: false, cleanUpTokenizationSpaces: false }),
      logprob: logits[id]! - logZ, // a top-k index of these logits
    }));
  }

  async close(): Promise<void> {
    await this.model.dispose();
  }
}

/** Loads a model folder (plus an optional adapter) as a {@link LocalJudge}. */
export async function loadLocalJudge(dir: string, opts: LocalJudgeOptions = {}): Promise<LocalJudge> {
  const tokenizer = await loadTokenizer(dir);
  if (tokenizer.chatTemplate === null) {
    throw new EmlensError(
      `The local judge ${dir} has no chat template; use an instruct model (with chat_template) as the judge.`,
    );
  }
  const model = await loadModel(dir, opts);
  return new LocalJudge(model, tokenizer, {
    name: `local:${dir}${opts.adapter ? `+${opts.adapter}` : ''}`,
    batchSize: opts.batchSize,
  });
}
