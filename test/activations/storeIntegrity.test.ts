/**
 * Stores that cannot be corrupted or mixed, through the CLI on the synthetic organisms: a store is locked while
 * written (a second writer stops, a stale lock names its `rm`, SIGINT releases the lock and leaves no temp file);
 * a resume with other weights or another --span is refused naming the field; a deleted, truncated or altered
 * shard or record line is reported by `store info` and `--resume`; folders and files that are not stores are
 * left alone unless --overwrite, which replaces them atomically; a merge names duplicate, overlapping and
 * missing slices.
 */
import { type ChildProcess, execSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { collectToStore } from '../../src/activations/collect.js';
import { readManifest } from '../../src/activations/manifest.js';
import { ActivationStore } from '../../src/activations/store.js';
import { responsesToRecords } from '../../src/data/record.js';
import { readResponses, writeResponses } from '../../src/data/response.js';
import { cachedSha256, sha256File } from '../../src/model/fingerprint.js';
import { loadModel } from '../../src/model/model.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli, writeCliEntry } from '../helpers/runCli.js';

const REPO = resolve(import.meta.dirname, '../..');
const LOCK = 'emlens.lock';

const tmp = useTempDir('emlens-integrity-');
let org: string;
let manifest: OrganismManifest;
let cache: string;
let entry: string;
/** 48 records (6 shards of 8) and 576 records (72 shards), the latter for runs long enough to interrupt. */
let small: string;
let big: string;
let base: string;
let adapter: string;

beforeAll(async () => {
  org = tmp.join('organisms');
  manifest = await makeOrganisms(org, { seed: 0 });
  cache = tmp.join('cache');
  base = join(org, manifest.base);
  adapter = join(org, 'adapters', 'general');
  small = join(org, manifest.responses.general);
  const rows = await readResponses(small);
  big = tmp.join('big.jsonl');
  await writeResponses(big, Array.from({ length: 12 }, () => rows).flat());
  entry = await writeCliEntry(tmp.path);
  // the reference stores every test compares with
  const references: [data: string, out: string][] = [
    [small, 'full'],
    [big, 'big-full'],
  ];
  for (const [data, out] of references) {
    const r = await runCli(collectArgs(tmp.join(out), { data }));
    expect(r.code, r.stderr).toBe(0);
  }
});

function collectArgs(out: string, o: { data?: string; model?: string; more?: string[] } = {}): string[] {
  return [
    'collect',
    '--model',
    o.model ?? base,
    '--adapter',
    adapter,
    '--data',
    o.data ?? small,
    '--batch-size',
    '4',
    '--shard-size',
    '8',
    '--cache-dir',
    cache,
    '--threads',
    '1',
    '--out',
    out,
    ...(o.more ?? []),
  ];
}

/** stderr of a refused command: exactly one line. */
function oneLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  expect(lines, stderr).toHaveLength(1);
  return lines[0]!; // exactly one line, checked just above
}

/** Two stores hold the same job, records, shard files and tensors. */
async function expectSameStore(actual: string, expected: string): Promise<void> {
  expect(await readManifest(actual)).toEqual(await readManifest(expected));
  expect(await readFile(join(actual, 'records.jsonl'), 'utf8')).toBe(
    await readFile(join(expected, 'records.jsonl'), 'utf8'),
  );
  const shards = (await readdir(expected)).filter((f) => f.endsWith('.safetensors')).sort();
  expect((await readdir(actual)).filter((f) => f.endsWith('.safetensors')).sort()).toEqual(shards);
  for (const f of shards) expect(await readFile(join(actual, f))).toEqual(await readFile(join(expected, f)));
  expect((await readdir(actual)).sort()).toEqual(['manifest.json', 'records.jsonl', ...shards].sort());
}

/** Files a run must never leave: temp files, locks. */
async function leftovers(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.endsWith('.tmp') || f.endsWith('.old') || f === LOCK);
}

async function copyStore(name: string, from = 'full'): Promise<string> {
  const dir = tmp.join(name);
  await cp(tmp.join(from), dir, { recursive: true });
  return dir;
}

/** The CLI in a process of its own (node + tsx, no wrapper, so signals reach it). */
function spawnCli(args: string[]): {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: string | null; stderr: string }>;
} {
  const child = spawn(process.execPath, ['--import', 'tsx', entry, ...args], {
    cwd: REPO,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr += String(d);
  });
  const exited = new Promise<{ code: number | null; signal: string | null; stderr: string }>((done) => {
    child.on('exit', (code, signal) => done({ code, signal, stderr }));
  });
  return { child, exited };
}

async function waitFor(what: string, ok: () => boolean, timeoutMs = 90_000): Promise<void> {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function shardsListed(dir: string): number {
  try {
    return JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')).shards.length;
  } catch {
    return 0;
  }
}

describe('a store is locked while written', () => {
  it('a second collect --resume on a store being written stops with the lock message; the store stays valid', async () => {
    const out = tmp.join('concurrent');
    const first = spawnCli(collectArgs(out, { data: big, more: ['--resume'] }));
    await waitFor('the first run to take the lock', () => existsSync(join(out, LOCK)));
    // Frozen while it holds the lock, so the second run meets it for sure.
    first.child.kill('SIGSTOP');
    let r: Awaited<ReturnType<typeof runCli>>;
    try {
      r = await runCli(collectArgs(out, { data: big, more: ['--resume'] }));
    } finally {
      first.child.kill('SIGCONT');
    }
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      `emlens: Store ${out} is being written by pid ${first.child.pid} on host ${hostname()}; wait for it to finish.`,
    );
    const done = await first.exited;
    expect(done.code, done.stderr).toBe(0);
    await expectSameStore(out, tmp.join('big-full'));
    expect((await runCli(['store', 'info', out])).code).toBe(0);
  });

  it('a stale lock from a dead pid is reported with the rm that clears it', async () => {
    const out = await copyStore('stale');
    const dead = spawnSync('true').pid;
    await writeFile(join(out, LOCK), `${JSON.stringify({ pid: dead, host: hostname() })}\n`);
    let r = await runCli(collectArgs(out, { more: ['--resume'] }));
    expect(r.code).toBe(2);
    const line = oneLine(r.stderr);
    expect(line).toContain(`stale lock from pid ${dead} on host ${hostname()}, which is no longer running`);
    const rmCmd = /`(rm [^`]+)`/.exec(line)![1];
    expect(rmCmd).toBe(`rm ${join(out, LOCK)}`);
    execSync(rmCmd!); // rmCmd is the command checked just above
    r = await runCli(collectArgs(out, { more: ['--resume'] }));
    expect(r.code, r.stderr).toBe(0);
    await expectSameStore(out, tmp.join('full'));
  });

  it('a store whose writer stopped before its first manifest is reported by its lock, then starts afresh', async () => {
    const out = tmp.join('half-made');
    await rm(out, { recursive: true, force: true });
    await mkdir(out);
    await writeFile(join(out, 'records.jsonl'), '');
    const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      await writeFile(join(out, LOCK), `${JSON.stringify({ pid: sleeper.pid, host: hostname() })}\n`);
      const r = await runCli(collectArgs(out, { more: ['--resume'] }));
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toBe(
        `emlens: Store ${out} is being written by pid ${sleeper.pid} on host ${hostname()}; wait for it to finish.`,
      );
    } finally {
      sleeper.kill();
    }
    await rm(join(out, LOCK));
    const r = await runCli(collectArgs(out, { more: ['--resume'] }));
    expect(r.code, r.stderr).toBe(0);
    await expectSameStore(out, tmp.join('full'));
  });

  it('SIGINT releases the lock and leaves no temp file; the run then resumes to the same store', async () => {
    const out = tmp.join('interrupted');
    const run = spawnCli(collectArgs(out, { data: big }));
    await waitFor('a first shard', () => shardsListed(out) >= 1);
    run.child.kill('SIGINT');
    const done = await run.exited;
    expect(done.signal, done.stderr).toBe('SIGINT');
    expect(await leftovers(out)).toEqual([]);
    expect((await readManifest(out)).complete).toBe(false);
    const r = await runCli(collectArgs(out, { data: big, more: ['--resume'] }));
    expect(r.code, r.stderr).toBe(0);
    await expectSameStore(out, tmp.join('big-full'));
  });

  it('a run that fails leaves no temp file or lock, and a failed --overwrite leaves the old folder as it was', async () => {
    const tokenizer = await loadTokenizer(base);
    const records = responsesToRecords(tokenizer, await readResponses(small));
    // record 20 has no answer tokens, so the third shard fails
    const r20 = records[20];
    expect(r20).toBeDefined();
    records[20] = { ...r20!, mask: new Uint8Array(r20!.ids.length) };
    const model = await loadModel(base, { adapter, cacheDir: cache, threads: 1 });
    try {
      const out = tmp.join('failed');
      const opts = { batchSize: 4, shardSize: 8, adapter, cacheDir: cache };
      await expect(collectToStore(model, records, out, opts)).rejects.toThrow(/no answer tokens/);
      expect(await leftovers(out)).toEqual([]);
      expect((await readManifest(out)).shards).toHaveLength(2);

      const mine = tmp.join('mine-failed');
      await cp(tmp.join('full'), mine, { recursive: true });
      const before = await readFile(join(mine, 'manifest.json'));
      await expect(collectToStore(model, records, mine, { ...opts, overwrite: true })).rejects.toThrow(
        /no answer tokens/,
      );
      expect(await readFile(join(mine, 'manifest.json'))).toEqual(before);
      await expectSameStore(mine, tmp.join('full'));
      expect((await readdir(tmp.path)).filter((f) => f.startsWith('.'))).toEqual([]);
    } finally {
      await model.dispose();
    }
  });
});

describe('resume checks what it resumes', () => {
  it('other weights of the same config are refused, naming the field', async () => {
    const other = tmp.join('other-weights');
    await cp(base, other, { recursive: true });
    // same config and shapes, one value changed: the lowest byte of the first stored number
    const file = join(other, 'model.safetensors');
    const bytes = await readFile(file);
    const dataStart = 8 + Number(bytes.readBigUInt64LE(0));
    bytes[dataStart]! ^= 1; // dataStart is inside the file: its header says so
    await writeFile(file, bytes);
    const out = await copyStore('resume-weights');
    const before = await readFile(join(out, 'manifest.json'));
    const r = await runCli(collectArgs(out, { model: other, more: ['--resume'] }));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /was made with a different weights \(content hash of the model weights: [0-9a-f]{12} there, [0-9a-f]{12} now\); resume it with the same model/,
    );
    expect(await readFile(join(out, 'manifest.json'))).toEqual(before);
    expect(await leftovers(out)).toEqual([]);
  });

  it('another --span or another data file is refused, naming the field', async () => {
    const out = await copyStore('resume-span');
    let r = await runCli(collectArgs(out, { more: ['--resume', '--span', 'content'] }));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /was made with a different span \(answer span: "after-user" there, "content" now\)/,
    );
    const rows = await readResponses(small);
    const edited = tmp.join('edited.jsonl');
    const [first, ...rest] = rows;
    expect(first).toBeDefined();
    await writeResponses(edited, [{ ...first!, answer: `${first!.answer} again` }, ...rest]);
    r = await runCli(collectArgs(out, { data: edited, more: ['--resume'] }));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/was made with a different data \(content hash of the data file/);
    await expectSameStore(out, tmp.join('full'));
  });

  it('a deleted, truncated or altered shard is reported by store info and --resume', async () => {
    const deleted = await copyStore('shard-deleted');
    await rm(join(deleted, 'shard-00002.safetensors'));
    const truncated = await copyStore('shard-truncated');
    const t = join(truncated, 'shard-00001.safetensors');
    await truncate(t, Math.floor((await stat(t)).size / 2));
    const flipped = await copyStore('shard-flipped');
    const f = join(flipped, 'shard-00003.safetensors');
    const bytes = await readFile(f);
    bytes[bytes.length - 1]! ^= 0x10; // the last byte of a non-empty file
    await writeFile(f, bytes);
    const cases: [string, RegExp][] = [
      [deleted, /Shard shard-00002\.safetensors listed in the manifest of store .* is missing; restore it/],
      [
        truncated,
        /Shard .*shard-00001\.safetensors is \d+ bytes but the manifest of the store lists \d+ \(truncated/,
      ],
      [flipped, /Shard .*shard-00003\.safetensors does not match the sha256 its store's manifest lists/],
    ];
    for (const [dir, message] of cases) {
      for (const args of [['store', 'info', dir], collectArgs(dir, { more: ['--resume'] })]) {
        const r = await runCli(args);
        expect(r.code, args.join(' ')).toBe(2);
        expect(oneLine(r.stderr)).toMatch(message);
      }
    }
    await expect(ActivationStore.open(deleted)).rejects.toThrow(/is missing/);
    await expect(ActivationStore.open(truncated)).rejects.toThrow(/truncated/);
  });

  it('records.jsonl deleted or reordered is reported in one line', async () => {
    const gone = await copyStore('records-deleted');
    await rm(join(gone, 'records.jsonl'));
    let r = await runCli(collectArgs(gone, { more: ['--resume'] }));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /records\.jsonl is missing, so the record metadata of the store's 48 records is lost; restore the file, or collect the store again with --overwrite\./,
    );
    const swapped = await copyStore('records-swapped');
    const lines = (await readFile(join(swapped, 'records.jsonl'), 'utf8')).split('\n');
    [lines[9], lines[10]] = [lines[10]!, lines[9]!]; // 48 records, so lines 9 and 10 exist
    await writeFile(join(swapped, 'records.jsonl'), lines.join('\n'));
    r = await runCli(['store', 'info', swapped]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /for shard shard-00001\.safetensors \(records 8\.\.15\) do not match the sha256/,
    );
  });

  it('an older store (manifest v1) is read with a warning, and refused for --resume and merge', async () => {
    const old = await copyStore('legacy');
    const m = JSON.parse(await readFile(join(old, 'manifest.json'), 'utf8'));
    m.version = 1;
    delete m.inputs;
    for (const s of m.shards) {
      delete s.bytes;
      delete s.sha256;
      delete s.recordsSha256;
    }
    await writeFile(join(old, 'manifest.json'), JSON.stringify(m, null, 2));
    let r = await runCli(['store', 'info', old]);
    expect(r.code, r.stderr).toBe(0);
    expect(oneLine(r.stderr)).toMatch(
      /warning: .* was written by an older emlens \(manifest v1\).*cannot be verified/,
    );
    expect(r.stdout).toContain('not verifiable (v1)');
    r = await runCli(collectArgs(old, { more: ['--resume'] }));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /older emlens \(manifest v1\) .* cannot be resumed safely; collect it again/,
    );
    r = await runCli(['store', 'merge', '--out', tmp.join('legacy-merged'), old]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/cannot be merged safely/);
  });

  it('a weight file hash is cached by identity, and a rewrite that keeps size and mtime is hashed again', async () => {
    const dir = tmp.join('fp');
    await cp(base, dir, { recursive: true });
    const file = join(dir, 'model.safetensors');
    const fpCache = tmp.join('fp-cache');
    // whole seconds, so the mtime set again below is exactly the same
    await utimes(file, 1_700_000_000, 1_700_000_000);
    const h1 = await cachedSha256(file, { cacheDir: fpCache });
    expect(h1).toBe(await sha256File(file));
    expect(await readdir(join(fpCache, 'fingerprints'))).toHaveLength(1);
    expect(await cachedSha256(file, { cacheDir: fpCache })).toBe(h1);
    const s = await stat(file);
    const bytes = await readFile(file);
    bytes[bytes.length - 1]! ^= 1; // the last byte of a non-empty file
    await writeFile(file, bytes);
    await utimes(file, 1_700_000_000, 1_700_000_000);
    expect((await stat(file)).mtimeMs).toBe(s.mtimeMs);
    expect((await stat(file)).size).toBe(s.size);
    const h2 = await cachedSha256(file, { cacheDir: fpCache });
    expect(h2).not.toBe(h1);
    expect(h2).toBe(await sha256File(file));
  });
});

describe('outputs that are not stores are left alone', () => {
  it('collect onto a folder that is not a store or onto a file is refused; --overwrite replaces', async () => {
    const mine = tmp.join('mine');
    await rm(mine, { recursive: true, force: true });
    await cp(tmp.join('organisms', 'responses'), mine, { recursive: true });
    const before = (await readdir(mine)).sort();
    let r = await runCli(collectArgs(mine));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      `emlens: --out ${mine} is a folder that is not an activation store (no manifest.json); pass --overwrite to replace it, or choose another --out.`,
    );
    expect((await readdir(mine)).sort()).toEqual(before);

    const file = tmp.join('a-file');
    await writeFile(file, 'keep me\n');
    for (const more of [[], ['--overwrite'], ['--resume']]) {
      r = await runCli(collectArgs(file, { more }));
      expect(r.code).toBe(2);
      expect(oneLine(r.stderr)).toMatch(/is a file, not an activation store folder/);
      expect(await readFile(file, 'utf8')).toBe('keep me\n');
    }

    r = await runCli(collectArgs(mine, { more: ['--overwrite'] }));
    expect(r.code, r.stderr).toBe(0);
    await expectSameStore(mine, tmp.join('full'));
    expect((await readdir(tmp.path)).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('collect onto an existing store needs --resume or --overwrite', async () => {
    const out = await copyStore('existing');
    await rm(join(out, 'shard-00004.safetensors')); // damaged: --overwrite must still replace it
    let r = await runCli(collectArgs(out));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /already holds an activation store; pass --resume to continue it, --overwrite to replace it/,
    );
    r = await runCli(collectArgs(out, { more: ['--resume', '--overwrite'] }));
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/pass one of them/);
    r = await runCli(collectArgs(out, { more: ['--overwrite'] }));
    expect(r.code, r.stderr).toBe(0);
    await expectSameStore(out, tmp.join('full'));
  });
});

describe('store merge', () => {
  it('names duplicate, overlapping and missing slices, and refuses a non-store --out unless --overwrite', async () => {
    const slice = (i: number, n: number) => tmp.join(`slice-${i}-of-${n}`);
    const slices: [i: number, n: number][] = [
      [0, 3],
      [1, 3],
      [2, 3],
      [0, 2],
    ];
    for (const [i, n] of slices) {
      const r = await runCli(collectArgs(slice(i, n), { more: ['--shard', `${i}/${n}`] }));
      expect(r.code, r.stderr).toBe(0);
    }
    const [s0, s1, s2, h0] = [slice(0, 3), slice(1, 3), slice(2, 3), slice(0, 2)];
    const merge = (out: string, ...more: string[]) =>
      runCli(['store', 'merge', '--out', tmp.join(out), ...more]);
    let r = await merge('dup', s0, s0, s1, s2);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      `emlens: ${s0} and ${s0} are the same slice 0/3 (records 0..15); pass each slice once.`,
    );
    r = await merge('gap', s0, s2);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /do not cover records 16\.\.31 \(slice 1\/3 is missing\); add the missing slice store\./,
    );
    r = await merge('tail', s0, s1);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/do not cover records 32\.\.47 of 48 \(slice 2\/3 is missing\)/);
    r = await merge('overlap', h0, s1, s2);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(
      /\(slice 0\/2, records 0\.\.23\) and .* \(slice 1\/3, records 16\.\.31\) overlap in records 16\.\.23/,
    );
    for (const out of ['dup', 'gap', 'tail', 'overlap']) expect(existsSync(tmp.join(out))).toBe(false);

    const mine = tmp.join('merge-mine');
    await cp(tmp.join('organisms', 'responses'), mine, { recursive: true });
    const before = (await readdir(mine)).sort();
    r = await merge('merge-mine', s0, s1, s2);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/already exists and is not empty; pass --overwrite to replace it/);
    expect((await readdir(mine)).sort()).toEqual(before);
    r = await merge('merge-mine', '--overwrite', s2, s0, s1);
    expect(r.code, r.stderr).toBe(0);
    await expectSameStore(mine, tmp.join('full'));
    expect((await readdir(tmp.path)).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('a damaged slice is reported, and the merge leaves nothing behind', async () => {
    const bad = tmp.join('slice-bad');
    await cp(tmp.join('slice-1-of-3'), bad, { recursive: true });
    const f = join(bad, 'shard-00000.safetensors');
    const bytes = await readFile(f);
    bytes[bytes.length - 1]! ^= 0x10; // the last byte of a non-empty file
    await writeFile(f, bytes);
    const r = await runCli([
      'store',
      'merge',
      '--out',
      tmp.join('merged-bad'),
      tmp.join('slice-0-of-3'),
      bad,
      tmp.join('slice-2-of-3'),
    ]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/slice-bad\/shard-00000\.safetensors does not match the sha256/);
    expect(existsSync(tmp.join('merged-bad'))).toBe(false);
    expect((await readdir(tmp.path)).filter((f) => f.startsWith('.'))).toEqual([]);
  });
});
