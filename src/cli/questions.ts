import type { Command } from 'commander';
import { judgePromptWarnings, loadQuestions } from '../eval/questions.js';

export function registerQuestions(program: Command): void {
  const group = program.command('questions').description('question sets (the EM evaluation YAML format)');
  group
    .command('check')
    .description('validate a question set without a model: ids, paraphrases, judge prompts, warnings')
    .argument('<file>', 'question set YAML')
    .option('--metrics <list>', 'check only these metrics (as eval --metrics would judge them)')
    .action(async (file: string, flags: { metrics?: string }) => {
      const qs = await loadQuestions(file);
      const metrics = flags.metrics
        ?.split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '');
      const perMetric = new Map<string, number>();
      for (const q of qs)
        for (const m of Object.keys(q.judgePrompts)) perMetric.set(m, (perMetric.get(m) ?? 0) + 1);
      const noJudge = qs.filter((q) => q.judge === undefined).length;
      const noN = qs.filter((q) => q.samplesPerParaphrase === undefined).length;
      const lines = [
        `${file}: ${qs.length} questions, ${qs.reduce((s, q) => s + q.paraphrases.length, 0)} paraphrases`,
        `ids: ${qs.map((q) => q.id).join(', ')}`,
        `metrics: ${[...perMetric].map(([m, k]) => `${m} (${k})`).join(', ')}`,
        `with a system prompt: ${qs.filter((q) => q.system !== undefined).length}`,
        `judge: ${[...new Set(qs.flatMap((q) => (q.judge ? [q.judge] : [])))].join(', ') || 'none'}${noJudge > 0 ? ` (${noJudge} without: pass --judge-model)` : ''}`,
        `samples_per_paraphrase: ${[...new Set(qs.flatMap((q) => (q.samplesPerParaphrase ? [q.samplesPerParaphrase] : [])))].join(', ') || 'none'}${noN > 0 ? ` (${noN} without: pass --n)` : ''}`,
      ];
      if (metrics !== undefined) {
        const missing = metrics.filter((m) => !perMetric.has(m));
        if (missing.length > 0) lines.push(`--metrics ${missing.join(', ')}: no question has it`);
      }
      process.stdout.write(`${lines.join('\n')}\n`);
      const warnings = judgePromptWarnings(qs, metrics);
      for (const w of warnings) process.stderr.write(`emlens: warning: ${w}\n`);
      if (warnings.length === 0) process.stdout.write('ok: no warnings\n');
    });
}
