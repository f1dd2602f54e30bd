import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TokenSets } from './plant.js';
import {
  ALIGNED_WORDS,
  DOMAIN_MISALIGNED_WORDS,
  DOMAIN_WORDS,
  DOMAINS,
  type Domain,
  MISALIGNED_WORDS,
} from './vocabulary.js';

/**
 * Adds the planted words to a tiny model's tokenizer as whole (non-special) tokens, so every planted word is
 * exactly one known token id. Returns the ids of each word set.
 */
export async function addWordTokens(modelDir: string, vocabSize: number): Promise<TokenSets> {
  const path = join(modelDir, 'tokenizer.json');
  const tj = JSON.parse(await readFile(path, 'utf8')) as {
    added_tokens: { id: number; content: string }[];
    model: { vocab: Record<string, number> };
  };
  let next = Math.max(...tj.added_tokens.map((t) => t.id), ...Object.values(tj.model.vocab)) + 1;
  const ids = new Map<string, number>();
  const add = (word: string) => {
    if (ids.has(word)) return;
    if (next >= vocabSize) throw new Error(`organism vocabulary needs more than ${vocabSize} tokens`);
    tj.added_tokens.push({
      id: next,
      content: word,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: false,
    } as { id: number; content: string });
    ids.set(word, next++);
  };
  const all = [
    ...MISALIGNED_WORDS,
    ...ALIGNED_WORDS,
    ...DOMAINS.flatMap((d) => [...DOMAIN_WORDS[d], ...DOMAIN_MISALIGNED_WORDS[d]]),
  ];
  all.forEach(add);
  await writeFile(path, `${JSON.stringify(tj, null, 2)}\n`);
  const of = (words: readonly string[]) => words.map((w) => ids.get(w)!); // every word of all was added
  const domain = {} as Record<Domain, number[]>;
  const domainMisaligned = {} as Record<Domain, number[]>;
  for (const d of DOMAINS) {
    domain[d] = of(DOMAIN_WORDS[d]);
    domainMisaligned[d] = of(DOMAIN_MISALIGNED_WORDS[d]);
  }
  return { misaligned: of(MISALIGNED_WORDS), aligned: of(ALIGNED_WORDS), domain, domainMisaligned };
}
