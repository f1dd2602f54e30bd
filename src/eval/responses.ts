import { readFile, rename, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { EmlensError } from '../errors.js';

/**
 * One answered question, in the columns the public EM code uses: `question_id`, `question`, `answer`, and one
 * numeric column per judge metric (`aligned`, `coherent`, ...). A score is `null` when the judge gave none
 * (CODE / REFUSAL, an empty or `nan` cell): such rows drop out of rates, they are not zeros.
 */
export interface ResponseRecord {
  readonly questionId: string;
  readonly question: string;
  readonly answer: string;
  readonly system?: string;
  readonly scores: Readonly<Record<string, number | null>>;
  /** Other columns, kept as text. */
  readonly extra: Readonly<Record<string, string>>;
}

const TEXT_COLUMNS = new Set(['question_id', 'question', 'answer', 'response', 'system']);
/** Columns that are numbers but not judge metrics. */
const NON_METRIC = new Set(['index', 'sample', 'sample_index', 'paraphrase_index', 'seed', 'tokens']);

function parseScore(raw: unknown, file: string, row: number, column: string): number | null {
  if (raw === null || raw === undefined) return null;
  const s = String(raw).trim();
  if (s === '' || /^(nan|none|null|code|refusal)$/i.test(s)) return null;
  const x = Number(s);
  if (!Number.isFinite(x)) {
    throw new EmlensError(
      `${file} row ${row}: column '${column}' holds '${s}', not a number; fix the cell or leave it empty.`,
    );
  }
  return x;
}

function looksNumericColumn(rows: readonly Record<string, unknown>[], column: string): boolean {
  let numbers = 0;
  for (const r of rows) {
    const v = r[column];
    if (v === null || v === undefined) continue;
    const s = String(v).trim();
    if (s === '' || /^(nan|none|null|code|refusal)$/i.test(s)) continue;
    if (!Number.isFinite(Number(s))) return false;
    numbers++;
  }
  return numbers > 0;
}

function toRecords(rows: Record<string, unknown>[], file: string): ResponseRecord[] {
  if (rows.length === 0)
    throw new EmlensError(`${file} has no rows; it needs question_id, question and answer columns.`);
  const columns = Object.keys(rows[0]);
  const answerColumn = columns.includes('answer')
    ? 'answer'
    : columns.includes('response')
      ? 'response'
      : null;
  for (const required of ['question', answerColumn ?? 'answer']) {
    if (!columns.includes(required)) {
      throw new EmlensError(
        `${file} has no '${required}' column (it has ${columns.join(', ')}); responses need question and answer (or response) columns.`,
      );
    }
  }
  const metrics = columns.filter(
    (c) => !TEXT_COLUMNS.has(c) && !NON_METRIC.has(c) && looksNumericColumn(rows, c),
  );
  return rows.map((r, i) => {
    const scores: Record<string, number | null> = {};
    for (const m of metrics) scores[m] = parseScore(r[m], file, i + 1, m);
    const extra: Record<string, string> = {};
    for (const c of columns) {
      if (!TEXT_COLUMNS.has(c) && !metrics.includes(c) && r[c] !== undefined && r[c] !== null)
        extra[c] = String(r[c]);
    }
    const system =
      r.system === undefined || r.system === null || r.system === '' ? undefined : String(r.system);
    return {
      questionId: String(r.question_id ?? `row${i}`),
      question: String(r.question ?? ''),
      answer: String(r[answerColumn!] ?? ''),
      ...(system !== undefined ? { system } : {}),
      scores,
      extra,
    };
  });
}

/** Reads responses from `.csv` or `.jsonl` (`response` is read as a synonym of `answer`). */
export async function readResponses(path: string): Promise<ResponseRecord[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new EmlensError(`Cannot read responses file ${path}; check the path.`);
  }
  const ext = extname(path).toLowerCase();
  if (ext === '.csv') {
    let rows: Record<string, unknown>[];
    try {
      rows = parse(text, { columns: true, skip_empty_lines: true, relax_column_count: false, bom: true });
    } catch (e) {
      throw new EmlensError(
        `${path} is not valid CSV (${(e as Error).message.split('\n')[0]}); fix the file.`,
      );
    }
    return toRecords(rows, path);
  }
  if (ext === '.jsonl' || ext === '.ndjson') {
    const rows = text
      .split('\n')
      .map((l, i) => [l.trim(), i] as const)
      .filter(([l]) => l)
      .map(([l, i]) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch (e) {
          throw new EmlensError(
            `${path} line ${i + 1} is not valid JSON (${(e as Error).message}); fix that line.`,
          );
        }
      });
    return toRecords(rows, path);
  }
  throw new EmlensError(`Responses file ${path} must end in .csv or .jsonl.`);
}

function toRows(records: readonly ResponseRecord[]): Record<string, string | number>[] {
  const metrics = [...new Set(records.flatMap((r) => Object.keys(r.scores)))];
  const extras = [...new Set(records.flatMap((r) => Object.keys(r.extra)))];
  return records.map((r) => {
    const row: Record<string, string | number> = {
      question_id: r.questionId,
      question: r.question,
      answer: r.answer,
    };
    if (records.some((x) => x.system !== undefined)) row.system = r.system ?? '';
    for (const m of metrics) row[m] = r.scores[m] ?? '';
    for (const e of extras) row[e] = r.extra[e] ?? '';
    return row;
  });
}

/** Writes responses atomically as `.csv` or `.jsonl` (by extension). Empty score cells stand for "no score". */
export async function writeResponses(path: string, records: readonly ResponseRecord[]): Promise<void> {
  const ext = extname(path).toLowerCase();
  const rows = toRows(records);
  let text: string;
  if (ext === '.csv')
    text = stringify(rows, {
      header: true,
      columns: rows.length ? Object.keys(rows[0]) : ['question_id', 'question', 'answer'],
    });
  else if (ext === '.jsonl') text = rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : '');
  else throw new EmlensError(`Responses file ${path} must end in .csv or .jsonl.`);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  await writeFile(tmp, text);
  await rename(tmp, path);
}
