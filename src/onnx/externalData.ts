import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';

/** Alignment of each tensor in the external data file, so ORT may memory-map it. */
const ALIGN = 64;

/**
 * Appends initializer bytes to the model's external data file as the graph is built, so a multi-GB model is
 * never held in memory twice.
 */
export class ExternalDataWriter {
  private fd: number;
  private offset = 0;

  /** @param path file to create; @param location its name relative to the model file (what ONNX records). */
  constructor(
    path: string,
    readonly location: string,
  ) {
    this.fd = openSync(path, 'w');
  }

  /** Writes bytes at the next aligned offset and returns where they landed. */
  append(bytes: Uint8Array): { offset: number; length: number } {
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
    return { offset: at, length: bytes.length };
  }

  close(): void {
    fsyncSync(this.fd);
    closeSync(this.fd);
  }
}
