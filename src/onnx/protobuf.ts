/**
 * A minimal protocol-buffers writer: just the wire types the ONNX schema needs. Messages are built
 * bottom-up (a nested message is encoded first, then written as a length-delimited field), which keeps the
 * writer stateless and the ONNX encoder a plain function per message type.
 */

enum WireType {
  Varint = 0,
  Fixed64 = 1,
  LengthDelimited = 2,
  Fixed32 = 5,
}

const textEncoder = new TextEncoder();

export class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private scratch: number[] = [];
  private size = 0;

  private flushScratch(): void {
    if (this.scratch.length === 0) return;
    const bytes = Uint8Array.from(this.scratch);
    this.chunks.push(bytes);
    this.size += bytes.length;
    this.scratch = [];
  }

  private varint(value: number | bigint): void {
    // Negative int64 values are written as 10-byte two's complement, as protobuf requires.
    let v = BigInt.asUintN(64, BigInt(value));
    if (v < 0x80n && typeof value === 'number' && value >= 0) {
      this.scratch.push(Number(v));
      return;
    }
    while (v >= 0x80n) {
      this.scratch.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.scratch.push(Number(v));
  }

  private tag(field: number, wire: WireType): void {
    this.varint((field << 3) | wire);
  }

  int(field: number, value: number | bigint): this {
    this.tag(field, WireType.Varint);
    this.varint(value);
    return this;
  }

  float(field: number, value: number): this {
    this.tag(field, WireType.Fixed32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.scratch.push(...b);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.tag(field, WireType.LengthDelimited);
    this.varint(value.length);
    this.flushScratch();
    this.chunks.push(value);
    this.size += value.length;
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, textEncoder.encode(value));
  }

  message(field: number, message: ProtoWriter): this {
    return this.bytes(field, message.finish());
  }

  /** Packed repeated varints (proto3 default for repeated scalars). */
  packedInts(field: number, values: readonly (number | bigint)[]): this {
    const inner = new ProtoWriter();
    for (const v of values) inner.varint(v);
    return this.bytes(field, inner.finish());
  }

  /** Packed repeated float32. */
  packedFloats(field: number, values: readonly number[]): this {
    return this.bytes(field, new Uint8Array(Float32Array.from(values).buffer));
  }

  finish(): Uint8Array {
    this.flushScratch();
    const [only] = this.chunks;
    if (only && this.chunks.length === 1) return only;
    const out = new Uint8Array(this.size);
    let offset = 0;
    for (const c of this.chunks) {
      out.set(c, offset);
      offset += c.length;
    }
    return out;
  }
}

// Fixed64 is unused by the ONNX subset we write; keep the enum complete for readers of the wire format.
void WireType.Fixed64;
