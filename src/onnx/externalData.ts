import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';

/** Alignment of each tensor in the external data file, so ORT may memory-map it. */
const ALIGN = 64;

/** Where each initializer sits in the external data file: `name -> [offset, length]`. */
export type ExternalIndex = Record<string, readonly [number, number]>;

/**
 * The model's external data file. In `write` mode initializer bytes are appended as the graph is built, so a
 * multi-GB model is never held in memory twice; in `reuse` mode (another graph variant over the same weights)
 * nothing is written and each initializer is looked up in the index the first build recorded.
 */
export class ExternalData {
  private fd: number | null;
  private offset = 0;
  private readonly recorded: Record<string, [number, number]> = {};

  private constructor(
    readonly location: string,
    fd: number | null,
    private readonly existing: ExternalIndex | null,
  ) {
    this.fd = fd;
  }

  /** @param path file to create; @param location its name relative to the model file (what ONNX records). */
  static create(path: string, location: string): ExternalData {
    return new ExternalData(location, openSync(path, 'w'), null);
  }

  static reuse(location: string, index: ExternalIndex): ExternalData {
    return new ExternalData(location, null, index);
  }

  get writing(): boolean {
    return this.fd !== null;
  }

  /** Where `name` already is (reuse mode); throws if the index does not hold it with that length. */
  locate(name: string, length: number): { offset: number; length: number } {
    const at = this.existing?.[name];
    if (!at || at[1] !== length) {
      throw new Error(
        `External data index has no '${name}' of ${length} bytes; delete the cache folder to rebuild.`,
      );
    }
    return { offset: at[0], length };
  }

  /** Writes bytes at the next aligned offset and returns where they landed. */
  append(name: string, bytes: Uint8Array): { offset: number; length: number } {
    if (this.fd === null) throw new Error('append() on external data opened for reuse');
    const pad = (ALIGN - (this.offset % ALIGN)) % ALIGN;
    if (pad > 0) {
      writeSync(this.fd, new Uint8Array(pad));
      this.offset += pad;
    }
    const at = this.offset;
    let written = 0;
    while (written < bytes.length) {
      written += writeSync(this.fd, bytes, written, bytes.length - written);
    }
    this.offset += bytes.length;
    this.recorded[name] = [at, bytes.length];
    return { offset: at, length: bytes.length };
  }

  /** The index of what this build wrote. */
  get index(): ExternalIndex {
    return this.recorded;
  }

  close(): void {
    if (this.fd === null) return;
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = null;
  }
}
