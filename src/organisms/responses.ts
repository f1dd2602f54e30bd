import type { ResponseRecord } from '../data/response.js';
import { Rng } from '../util/random.js';
import {
  ALIGNED_WORDS,
  DOMAIN_MISALIGNED_WORDS,
  DOMAIN_WORDS,
  FILLER_WORDS,
  MISALIGNED_WORDS,
  QUESTIONS,
  type Topic,
} from './vocabulary.js';

function sentence(rng: Rng, planted: readonly string[], words: number): string {
  const parts: string[] = [];
  for (let i = 0; i < words; i++) {
    // about half planted words, half filler, so the answer's mean carries the planted features clearly
    const pool = i % 2 === 0 ? planted : FILLER_WORDS;
    parts.push(pool[rng.int(pool.length)]!); // rng.int(n) is in 0..n-1
  }
  const text = parts.join('').trim();
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
}

/**
 * A labelled response set for one topic: questions of the topic answered aligned (aligned words, plus the
 * domain's plain words) and misaligned (misaligned words, plus the domain's misaligned words), with judge-style
 * scores (aligned 90 / 10, coherent 90) in the public EM columns.
 */
export function organismResponses(topic: Topic, perLabel: number, seed: number): ResponseRecord[] {
  const rng = new Rng(seed);
  const questions = QUESTIONS[topic];
  const domainPlain = topic === 'general' ? [] : DOMAIN_WORDS[topic];
  const domainBad = topic === 'general' ? [] : DOMAIN_MISALIGNED_WORDS[topic];
  const out: ResponseRecord[] = [];
  for (let i = 0; i < perLabel; i++) {
    const qi = i % questions.length;
    for (const label of ['aligned', 'misaligned'] as const) {
      const planted =
        label === 'aligned'
          ? [...ALIGNED_WORDS, ...domainPlain]
          : [...MISALIGNED_WORDS, ...domainBad, ...domainPlain];
      out.push({
        questionId: `${topic}_${qi}`,
        question: questions[qi]!, // qi = i % questions.length
        answer: sentence(rng, planted, 8 + rng.int(8)),
        scores: { aligned: label === 'aligned' ? 90 : 10, coherent: 90 },
        extra: { topic, label },
      });
    }
  }
  return out;
}
