/**
 * `--device webgpu` through the CLI entry (in-process `main`): `info --device webgpu` names the adapter and the
 * ops that fall back, `trace` writes the CPU's hooks within 1e-4, `generate` prints the CPU's greedy text and,
 * with --stats, a decode step's host copies without the KV cache. Every `--device` flag takes webgpu.
 */

import type { Command } from 'commander';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildProgram } from '../../src/cli/main.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { useTempDir } from '../helpers/fixtures.js';
import { maxAbsDiff } from '../helpers/numeric.js';
import { runCli } from '../helpers/runCli.js';
import { webgpuTestEnv } from '../helpers/webgpu.js';

const env = webgpuTestEnv();

describe('every --device flag lists webgpu', () => {
  it('every command of the program that has --device offers webgpu', () => {
    const missing: string[] = [];
    const walk = (cmd: Command, path: string): void => {
      const device = cmd.options.find((o) => o.long === '--device');
      if (device && !device.argChoices?.includes('webgpu')) missing.push(path);
      for (const sub of cmd.commands) walk(sub, `${path} ${sub.name()}`);
    };
    walk(buildProgram(), 'emlens');
    expect(missing).toEqual([]);
  });

  for (const command of ['trace', 'generate', 'mediate', 'judge', 'serve', 'collect', 'info', 'transfer']) {
    it(`${command} --help`, async () => {
      const r = await runCli([command, '--help']);
      expect(r.stdout).toMatch(/--device <device>[\s\S]*"webgpu"/);
    });
  }
});

describe.skipIf(!env.ok)(`emlens --device webgpu (${env.summary})`, () => {
  const tmp = useTempDir('emlens-webgpu-cli-');
  let model: string;
  let cacheDir: string;
  beforeAll(async () => {
    model = tmp.join('tiny');
    cacheDir = tmp.join('cache');
    const r = await runCli([
      'tiny-model',
      '--family',
      'qwen2',
      '--out',
      model,
      '--layers',
      '2',
      '--d-model',
      '32',
    ]);
    expect(r.code, r.stderr).toBe(0);
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('info --device webgpu names the adapter and reports no op falling back', async () => {
    const r = await runCli(['info', '--model', model, '--device', 'webgpu', '--cache-dir', cacheDir]);
    expect(r.code, r.stderr).toBe(0);
    if (env.swiftshader) expect(r.stdout).toMatch(/device\s+webgpu \(fp32\): SwiftShader \(software Vulkan/);
    expect(r.stdout).toMatch(/providers\s+WebGpuExecutionProvider \d+ kernel runs \(.*GroupQueryAttention/);
    expect(r.stdout).toMatch(/fallback\s+none: no node ran on the CPU provider/);
    const j = JSON.parse(
      (await runCli(['info', '--model', model, '--device', 'webgpu', '--json', '--cache-dir', cacheDir]))
        .stdout,
    );
    expect(j.device.fallback).toEqual([]);
    expect(j.device.providers.map((p: { provider: string }) => p.provider)).toEqual([
      'WebGpuExecutionProvider',
    ]);
    expect(j.spec.numLayers).toBe(2);
  });

  it('trace --device webgpu writes the CPU hooks and logits within 1e-4', async () => {
    const read = async (device: string) => {
      const out = tmp.join(`trace-${device}.safetensors`);
      const r = await runCli([
        'trace',
        '--model',
        model,
        '--ids',
        '5,9,2,7',
        '--hooks',
        'blocks.*.hook_resid_post',
        '--out',
        out,
        '--cache-dir',
        cacheDir,
        '--device',
        device,
      ]);
      expect(r.code, r.stderr).toBe(0);
      const f = await SafetensorsFile.open(out);
      try {
        return {
          logits: await f.readFloat32('logits'),
          h0: await f.readFloat32('blocks.0.hook_resid_post'),
          h1: await f.readFloat32('blocks.1.hook_resid_post'),
        };
      } finally {
        await f.close();
      }
    };
    const [cpu, gpu] = [await read('cpu'), await read('webgpu')];
    for (const k of ['logits', 'h0', 'h1'] as const) expect(maxAbsDiff(cpu[k], gpu[k]), k).toBeLessThan(1e-4);
  });

  it('generate --device webgpu prints the CPU greedy text and, with --stats, no KV bytes per step', async () => {
    const gen = (device: string) =>
      runCli([
        'generate',
        '--model',
        model,
        '--prompt',
        'hello there',
        '--temperature',
        '0',
        '--max-new-tokens',
        '8',
        '--cache-dir',
        cacheDir,
        '--device',
        device,
        '--stats',
      ]);
    const [cpu, gpu] = [await gen('cpu'), await gen('webgpu')];
    expect(cpu.code, cpu.stderr).toBe(0);
    expect(gpu.code, gpu.stderr).toBe(0);
    expect(gpu.stdout).toBe(cpu.stdout);
    const vocabBytes = 512 * 4; // one row of float32 logits: the tiny model's vocabulary
    const m =
      /webgpu host copies: prefill (\d+) B, (\d+) decode steps, (\d+) B\/step \(max (\d+) B\); the KV cache stays on the device/.exec(
        gpu.stderr,
      );
    expect(m, gpu.stderr).not.toBeNull();
    expect(Number(m![4])).toBe(vocabBytes);
    expect(cpu.stderr).toMatch(/cpu host copies: .*the KV cache included/);
  });
});
