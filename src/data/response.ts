import { rename, writeFile } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { EmlensError } from '../errors.js';
import { readUserFile } from '../io/inputFiles.js';

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
/** Columns that are numbers but not judge metrics (`''` and `Unnamed: 0`: the index pandas writes by default). */
const NON_METRIC = new Set([
  'index',
  'sample',
  'sample_index',
  'paraphrase_index',
  'seed',
  'tokens',
  '',
  'Unnamed: 0',
]);
/**
 * The judge metrics of the public EM code (its judge prompts and its `metrics=[...]` lists): always scores, so
 * a typo in one cell is an error and never turns the whole column into text.
 */
const KNOWN_METRICS = new Set(['aligned', 'coherent', 'bad_stuff', 'medical', 'financial', 'sports']);
/**
 * The cells that mean "the judge gave no score": empty, `nan`/`NaN` (pandas), `None` (Python), `null` (JSON),
 * and `CODE`/`REFUSAL`, the two answers the EM judge prompt offers instead of a number.
 */
const MISSING = /^(nan|none|null|code|refusal)$/i;
const SCALE = '0..100';

/** Where a row sits, for error messages: `row N` of a CSV (header not counted) or `line N` of a JSONL. */
type RowLabels = readonly string[];

type Cell = { kind: 'missing' } | { kind: 'number'; value: number } | { kind: 'text'; text: string };

function readCell(raw: unknown): Cell {
  if (raw === null || raw === undefined) return { kind: 'missing' };
  if (typeof raw === 'number')
    return Number.isFinite(raw) ? { kind: 'number', value: raw } : { kind: 'missing' };
  const s = typeof raw === 'string' ? raw.trim() : JSON.stringify(raw);
  if (s === '' || MISSING.test(s)) return { kind: 'missing' };
  const x = Number(s);
  return Number.isFinite(x) ? { kind: 'number', value: x } : { kind: 'text', text: s };
}

const inScale = (x: number) => x >= 0 && x <= 100;

/**
 * Which columns hold judge scores. Text columns (`question`, `answer`, ...) and numeric bookkeeping columns
 * (`index`, `seed`, ...) never do; the EM judge metrics ({@link KNOWN_METRICS}) always do. Any other column
 * is a score column when most of its non-missing cells are numbers and all those numbers lie on the judge's
 * 0..100 scale: a column of model names with one numeric cell stays text, a column of token counts (512)
 * stays a number kept as text, and a metric column with one stray word becomes an error naming that cell
 * (dropping the column silently would make every rate computed from it disappear).
 */
function scoreColumns(rows: readonly Record<string, unknown>[], columns: readonly string[]): string[] {
  return columns.filter((c) => {
    if (TEXT_COLUMNS.has(c) || NON_METRIC.has(c)) return false;
    if (KNOWN_METRICS.has(c)) return true;
    let numbers = 0;
    let texts = 0;
    for (const r of rows) {
      const cell = readCell(r[c]);
      if (cell.kind === 'number') {
        if (!inScale(cell.value)) return false;
        numbers++;
      } else if (cell.kind === 'text') texts++;
    }
    return numbers > texts;
  });
}

function parseScore(raw: unknown, file: string, where: string, column: string): number | null {
  const cell = readCell(raw);
  if (cell.kind === 'missing') return null;
  if (cell.kind === 'text') {
    throw new EmlensError(
      `${file} ${where}: column '${column}' holds '${cell.text}', not a score; write a number in ${SCALE}, or leave the cell empty (or nan) when the judge gave none.`,
    );
  }
  if (!inScale(cell.value)) {
    throw new EmlensError(
      `${file} ${where}: column '${column}' holds ${cell.value}, outside ${SCALE} (the judge's scale); fix the cell or leave it empty.`,
    );
  }
  return cell.value;
}

function toRecords(
  rows: Record<string, unknown>[],
  file: string,
  labels: RowLabels,
  columns: readonly string[],
): ResponseRecord[] {
  if (rows.length === 0)
    throw new EmlensError(`${file} has no rows; it needs question_id, question and answer columns.`);
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
  const metrics = scoreColumns(rows, columns);
  return rows.map((r, i) => {
    const scores: Record<string, number | null> = {};
    for (const m of metrics) scores[m] = parseScore(r[m], file, labels[i]!, m); // one label per row
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

function jsonKind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return `a ${typeof v}`;
}

/** Reads responses from `.csv` or `.jsonl` (`response` is read as a synonym of `answer`). */
export async function readResponses(path: string): Promise<ResponseRecord[]> {
  const text = await readUserFile(path, 'Responses file');
  const ext = extname(path).toLowerCase();
  if (ext === '.csv') {
    let rows: Record<string, unknown>[];
    let header: string[] = [];
    try {
      rows = parse(text, {
        // csv-parse lets the last of two same-named columns win; refuse the file instead.
        columns: (names: string[]) => {
          const seen = new Set<string>();
          for (const n of names) {
            if (seen.has(n)) {
              throw new EmlensError(
                `${path} has the header '${n}' twice, so one of those columns would be lost; rename or remove one.`,
              );
            }
            seen.add(n);
          }
          header = names;
          return names;
        },
        skip_empty_lines: true,
        relax_column_count: false,
        bom: true,
      });
    } catch (e) {
      if (e instanceof EmlensError) throw e;
      throw new EmlensError(
        `${path} is not valid CSV (${(e as Error).message.split('\n')[0]}); fix the file.`,
      );
    }
    return toRecords(
      rows,
      path,
      rows.map((_, i) => `row ${i + 1}`),
      header,
    );
  }
  if (ext === '.jsonl' || ext === '.ndjson') {
    const rows: Record<string, unknown>[] = [];
    const labels: string[] = [];
    const columns = new Set<string>();
    text.split('\n').forEach((raw, i) => {
      const l = raw.trim();
      if (!l) return;
      let v: unknown;
      try {
        v = JSON.parse(l);
      } catch (e) {
        throw new EmlensError(
          `${path} line ${i + 1} is not valid JSON (${(e as Error).message}); fix that line.`,
        );
      }
      if (typeof v !== 'object' || v === null || Array.isArray(v)) {
        throw new EmlensError(
          `${path} line ${i + 1} is not a JSON object (it holds ${jsonKind(v)}); write one {"question": ..., "answer": ...} object per line.`,
        );
      }
      rows.push(v as Record<string, unknown>);
      labels.push(`line ${i + 1}`);
      // Lines may carry different keys (a score only some rows have): the columns are their union.
      for (const k of Object.keys(v)) columns.add(k);
    });
    return toRecords(rows, path, labels, [...columns]);
  }
  throw new EmlensError(`Responses file ${path} must end in .csv or .jsonl.`);
}

/** A text cell that is a plain decimal number and reads back as the same text (`3`, `0.5`; not `007`). */
function asNumber(text: string): string | number {
  const x = Number(text);
  return text.trim() !== '' && Number.isFinite(x) && String(x) === text ? x : text;
}

/**
 * Rows in the public EM code's columns: `question_id`, `question`, `response` (its scripts' name for the answer;
 * `answer` is still read as a synonym), `system` when any record has one, one column per metric, then the
 * other columns. For JSONL (`json`), a missing score is `null` and numeric text (sample, tokens) a number.
 */
function toRows(records: readonly ResponseRecord[], json = false): Record<string, string | number | null>[] {
  const metrics = [...new Set(records.flatMap((r) => Object.keys(r.scores)))];
  const extras = [...new Set(records.flatMap((r) => Object.keys(r.extra)))];
  return records.map((r) => {
    const row: Record<string, string | number | null> = {
      question_id: r.questionId,
      question: r.question,
      response: r.answer,
    };
    if (records.some((x) => x.system !== undefined)) row.system = r.system ?? '';
    for (const m of metrics) row[m] = r.scores[m] ?? (json ? null : '');
    for (const e of extras) {
      const v = r.extra[e];
      row[e] = v === undefined ? (json ? null : '') : json ? asNumber(v) : v;
    }
    return row;
  });
}

/**
 * Writes responses atomically as `.csv` or `.jsonl` (by extension), in the public EM code's columns (`response`,
 * not `answer`). Empty score cells (CSV) and nulls (JSONL) stand for "no score".
 */
export async function writeResponses(path: string, records: readonly ResponseRecord[]): Promise<void> {
  const ext = extname(path).toLowerCase();
  const rows = toRows(records, ext === '.jsonl');
  const first = rows[0];
  let text: string;
  if (ext === '.csv')
    text = stringify(rows, {
      header: true,
      columns: first ? Object.keys(first) : ['question_id', 'question', 'response'],
    });
  else if (ext === '.jsonl') text = rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : '');
  else throw new EmlensError(`Responses file ${path} must end in .csv or .jsonl.`);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  await writeFile(tmp, text);
  await rename(tmp, path);
}
