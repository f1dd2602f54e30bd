/**
 * Headless Chromium for the report tests: Debian's `chromium` package (/usr/bin/chromium), installed with
 * apt-get when it is missing and the tests run as root; anything else fails with what to do. Each run gets a
 * fresh profile folder and no network services (QUIC, background networking, component updates, sync).
 */
import { execFile } from 'node:child_process';
import { access, constants, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';

/** The binary: $EMLENS_CHROMIUM, else Debian's. */
export const CHROMIUM = process.env.EMLENS_CHROMIUM ?? '/usr/bin/chromium';

/** The flags every headless run here gets (a driver such as playwright adds its own headless flag). */
export const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--hide-scrollbars',
];

function run(
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs: number; env?: NodeJS.ProcessEnv },
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      [...args],
      { timeout: opts.timeoutMs, maxBuffer: 256 * 1024 * 1024, env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({
          code,
          stdout: String(stdout),
          stderr: String(stderr) + (err && code !== 0 ? `\n${err.message}` : ''),
        });
      },
    );
  });
}

async function executable(p: string): Promise<boolean> {
  try {
    await access(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Returns the Chromium binary, installing Debian's package first where it is missing (as root:
 * `apt-get update && apt-get install -y --no-install-recommends chromium`). Throws a message that says what to
 * do when that is impossible: the report tests never skip silently.
 */
export async function ensureChromium(): Promise<string> {
  if (await executable(CHROMIUM)) return CHROMIUM;
  if (process.env.EMLENS_CHROMIUM !== undefined) {
    throw new Error(
      `EMLENS_CHROMIUM=${CHROMIUM} is not an executable; point it at a Chromium binary or unset it to use Debian's /usr/bin/chromium.`,
    );
  }
  const manual =
    'install it with `sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium` (Debian/Ubuntu), or set EMLENS_CHROMIUM to a Chromium binary';
  if (process.getuid?.() !== 0) {
    throw new Error(
      `Chromium is not installed at ${CHROMIUM} and the tests are not running as root; ${manual}.`,
    );
  }
  if (!(await executable('/usr/bin/apt-get'))) {
    throw new Error(`Chromium is not installed at ${CHROMIUM} and this system has no apt-get; ${manual}.`);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [['update'], ['install', '-y', '--no-install-recommends', 'chromium']]) {
    const r = await run('apt-get', args, { timeoutMs: 900_000, env });
    if (r.code !== 0) {
      throw new Error(
        `Installing Chromium failed at \`apt-get ${args.join(' ')}\` (exit ${r.code}: ${r.stderr.trim().split('\n').slice(-3).join(' ')}); ${manual}.`,
      );
    }
  }
  if (!(await executable(CHROMIUM))) {
    throw new Error(`apt-get installed chromium but ${CHROMIUM} is not there; ${manual}.`);
  }
  return CHROMIUM;
}

/** Runs headless Chromium on a local file with a fresh profile; returns its stdout. */
export async function chromium(file: string, extra: readonly string[], timeoutMs = 120_000): Promise<string> {
  const profile = await mkdtemp(join(tmpdir(), 'emlens-chromium-'));
  try {
    const r = await run(
      CHROMIUM,
      ['--headless', ...CHROMIUM_FLAGS, `--user-data-dir=${profile}`, ...extra, `file://${file}`],
      {
        timeoutMs,
      },
    );
    if (r.code !== 0) throw new Error(`chromium exited with ${r.code}: ${r.stderr.slice(-2000)}`);
    return r.stdout;
  } finally {
    await rm(profile, { recursive: true, force: true });
  }
}

/** The DOM after the page's load handlers ran (and a virtual-time budget for late work). */
export function dumpDom(file: string): Promise<string> {
  return chromium(file, ['--virtual-time-budget=10000', '--dump-dom']);
}

/** A PNG screenshot of the page's top `width x height` pixels. */
export async function screenshot(file: string, png: string, width = 1280, height = 2400): Promise<void> {
  await chromium(file, [
    '--virtual-time-budget=10000',
    `--window-size=${width},${height}`,
    `--screenshot=${png}`,
  ]);
}

/**
 * Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) and counts the pixels that are not
 * near-white, and the distinct colours among a sample: a blank page has neither.
 */
export function pngInk(data: Buffer): { width: number; height: number; ink: number; colours: number } {
  if (data.readUInt32BE(0) !== 0x89504e47) throw new Error('not a PNG');
  let at = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  while (at < data.length) {
    const len = data.readUInt32BE(at);
    const type = data.toString('latin1', at + 4, at + 8);
    const body = data.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      const depth = body[8];
      const colour = body[9];
      if (depth !== 8 || (colour !== 2 && colour !== 6) || body[12] !== 0) {
        throw new Error(`unsupported PNG (bit depth ${depth}, colour type ${colour}, interlace ${body[12]})`);
      }
      channels = colour === 6 ? 4 : 3;
    } else if (type === 'IDAT') idat.push(body);
    else if (type === 'IEND') break;
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const img = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      // In range: `img` holds height * stride bytes and each guard keeps the neighbour inside it;
      // `line` is this scanline's `stride` bytes after its filter byte.
      const a = x >= channels ? img[y * stride + x - channels]! : 0;
      const b = y > 0 ? img[(y - 1) * stride + x]! : 0;
      const c = x >= channels && y > 0 ? img[(y - 1) * stride + x - channels]! : 0;
      let v = line[x]!;
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      img[y * stride + x] = v & 0xff;
    }
  }
  let ink = 0;
  const colours = new Set<number>();
  for (let p = 0; p < width * height; p++) {
    // In range: `img` holds width * height pixels of `channels` (>= 3) bytes each.
    const r = img[p * channels]!;
    const g = img[p * channels + 1]!;
    const b = img[p * channels + 2]!;
    if (r < 240 || g < 240 || b < 240) ink++;
    if (p % 97 === 0) colours.add((r << 16) | (g << 8) | b);
  }
  return { width, height, ink, colours: colours.size };
}

/**
 * The Chromium binary for a browser test. Under CI (`CI=true`) it must already be there, as CI's setup installs
 * it: a missing binary then fails with what to fix instead of installing behind CI's back. Elsewhere
 * {@link ensureChromium} installs it where it can.
 */
export async function chromiumForTests(): Promise<string> {
  if (process.env.CI === 'true' && !(await executable(CHROMIUM))) {
    throw new Error(
      `CI=true but Chromium is not installed at ${CHROMIUM}; CI's setup (.ci/run) must install Debian's chromium package first (apt-get install -y --no-install-recommends chromium), or set EMLENS_CHROMIUM to a Chromium binary.`,
    );
  }
  return ensureChromium();
}
