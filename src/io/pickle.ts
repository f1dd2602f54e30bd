/**
 * A restricted pickle interpreter: it evaluates the data opcodes of protocols 2-4 (what `torch.save` writes)
 * and nothing that could run code. A pickle can only name a global (GLOBAL / STACK_GLOBAL) that the caller's
 * `resolveGlobal` allows, and can only call (REDUCE) or BUILD such an allowed global; everything else — an
 * unknown opcode, any other global (`os.system`, `builtins.eval`), object construction by NEWOBJ/INST/OBJ —
 * is refused with one sentence naming it. Nothing from the file is ever executed: an allowed global is a
 * plain TypeScript function that builds a value.
 *
 * Values: None -> null, bool, int -> number (bigint past 2^53), float -> number, str -> string,
 * bytes -> Uint8Array, list -> array, tuple -> {@link PickleTuple}, dict -> Map.
 */
import { EmlensError } from '../errors.js';

/** A Python tuple (kept apart from lists so that callers can tell them apart). */
export class PickleTuple {
  constructor(readonly items: readonly PickleValue[]) {}
}

/** A global the caller allowed; `call` is what REDUCE on it does, `build` what BUILD on its result does. */
export class PickleGlobal {
  constructor(
    readonly qualname: string,
    readonly call: (args: readonly PickleValue[]) => PickleValue,
  ) {}
}

/** Values an allowed global may build (the caller's own objects, e.g. a tensor). */
export interface PickleObject {
  readonly pickleObject: true;
  /** BUILD with `state` (default: refused). */
  build?(state: PickleValue): void;
}

export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PickleValue[]
  | PickleTuple
  | Map<PickleValue, PickleValue>
  | PickleGlobal
  | PickleObject;

export interface UnpickleOptions {
  /** Returns the allowed global `module.name`, or undefined to refuse it. */
  readonly resolveGlobal: (module: string, name: string) => PickleGlobal | undefined;
  /** BINPERSID: turns a persistent id into a value (torch: a storage); absent -> refused. */
  readonly persistentLoad?: (pid: PickleValue) => PickleValue;
  /** Names the file in messages. */
  readonly what: string;
  /** How to get a file this reader accepts. */
  readonly fix: string;
}

const MARK = Symbol('mark');
type Slot = PickleValue | typeof MARK;

/** Names of opcodes that are refused on purpose (they construct arbitrary objects or belong to protocol 0/1 text). */
const REFUSED: Record<number, string> = {
  105: 'INST',
  111: 'OBJ',
  129: 'NEWOBJ',
  146: 'NEWOBJ_EX',
  80: 'PERSID',
  130: 'EXT1',
  131: 'EXT2',
  132: 'EXT4',
  151: 'BYTEARRAY8',
  152: 'NEXT_BUFFER',
  153: 'READONLY_BUFFER',
  73: 'INT',
  76: 'LONG',
  70: 'FLOAT',
  83: 'STRING',
  86: 'UNICODE',
  112: 'PUT',
  103: 'GET',
  100: 'DICT',
  108: 'LIST',
};

/** Evaluates a pickle under the restrictions in the module comment and returns its value. */
export function unpickle(bytes: Uint8Array, opts: UnpickleOptions): PickleValue {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const refuse = (why: string) =>
    new EmlensError(
      `${opts.what} was refused: its pickle ${why}, and emlens never runs pickled code; ${opts.fix}.`,
    );
  const corrupt = (why: string) =>
    new EmlensError(`${opts.what} has a corrupt pickle (${why}); ${opts.fix}.`);
  const stack: Slot[] = [];
  const memo = new Map<number, PickleValue>();
  let p = 0;
  const need = (n: number) => {
    if (p + n > bytes.length) throw corrupt('it ends in the middle of an opcode');
  };
  const u8 = () => {
    need(1);
    return bytes[p++]!;
  };
  const u16 = () => {
    need(2);
    const v = dv.getUint16(p, true);
    p += 2;
    return v;
  };
  const u32 = () => {
    need(4);
    const v = dv.getUint32(p, true);
    p += 4;
    return v;
  };
  const u64 = () => {
    need(8);
    const v = dv.getBigUint64(p, true);
    p += 8;
    if (v > BigInt(bytes.length)) throw corrupt('a length is larger than the file');
    return Number(v);
  };
  const take = (n: number) => {
    need(n);
    const s = bytes.subarray(p, p + n);
    p += n;
    return s;
  };
  const utf8 = (n: number) => new TextDecoder('utf-8', { fatal: false }).decode(take(n));
  const line = () => {
    const end = bytes.indexOf(0x0a, p);
    if (end < 0) throw corrupt('a GLOBAL name has no end of line');
    const s = new TextDecoder().decode(bytes.subarray(p, end));
    p = end + 1;
    return s;
  };
  const pop = (): PickleValue => {
    const v = stack.pop();
    if (v === undefined) throw corrupt('it pops an empty stack');
    if (v === MARK) throw corrupt('it pops a MARK as a value');
    return v;
  };
  const top = (): PickleValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) throw corrupt('it needs a value on an empty stack');
    return v;
  };
  const popMark = (): PickleValue[] => {
    const at = stack.lastIndexOf(MARK);
    if (at < 0) throw corrupt('it needs a MARK that is not there');
    const items = stack.splice(at) as Slot[];
    return items.slice(1) as PickleValue[];
  };
  const global = (module: string, name: string): PickleGlobal => {
    const g = opts.resolveGlobal(module, name);
    if (g === undefined)
      throw refuse(`names the global ${module}.${name}, which is not on emlens's allow-list of tensor types`);
    return g;
  };
  const int = (v: bigint): number | bigint =>
    v >= Number.MIN_SAFE_INTEGER && v <= Number.MAX_SAFE_INTEGER ? Number(v) : v;
  const long = (b: Uint8Array): number | bigint => {
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b.length > 0 && b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return int(v);
  };
  const dictOf = (v: PickleValue, op: string): Map<PickleValue, PickleValue> => {
    if (!(v instanceof Map)) throw refuse(`applies ${op} to something that is not a dict`);
    return v;
  };
  const listOf = (v: PickleValue, op: string): PickleValue[] => {
    if (!Array.isArray(v)) throw refuse(`applies ${op} to something that is not a list`);
    return v;
  };
  const setItems = (d: Map<PickleValue, PickleValue>, kv: PickleValue[]) => {
    if (kv.length % 2 !== 0) throw corrupt('SETITEMS has an odd number of items');
    for (let i = 0; i < kv.length; i += 2) d.set(key(kv[i]!), kv[i + 1]!);
  };

  for (;;) {
    const at = p;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) throw corrupt('it uses a pickle protocol above 5');
        break;
      case 0x95: // FRAME: a length hint only
        u64();
        break;
      case 0x2e: // STOP
        return pop();
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x30: // POP
        stack.pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        need(4);
        stack.push(dv.getInt32(p, true));
        p += 4;
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(long(take(u8())));
        break;
      case 0x8b: // LONG4
        stack.push(long(take(u32())));
        break;
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(dv.getFloat64(p, false));
        p += 8;
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(u64()));
        break;
      case 0x54: // BINSTRING (Python 2 str)
        stack.push(utf8(u32()));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(utf8(u8()));
        break;
      case 0x42: // BINBYTES
        stack.push(Uint8Array.from(take(u32())));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(Uint8Array.from(take(u8())));
        break;
      case 0x8e: // BINBYTES8
        stack.push(Uint8Array.from(take(u64())));
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PickleTuple([]));
        break;
      case 0x85: // TUPLE1
        stack.push(new PickleTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push(new PickleTuple([pop(), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(new PickleTuple([pop(), b, c]));
        break;
      }
      case 0x74: // TUPLE
        stack.push(new PickleTuple(popMark()));
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x61: {
        // APPEND
        const v = pop();
        listOf(top(), 'APPEND').push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        listOf(top(), 'APPENDS').push(...items);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        dictOf(top(), 'SETITEM').set(key(k), v);
        break;
      }
      case 0x75: {
        // SETITEMS
        const kv = popMark();
        setItems(dictOf(top(), 'SETITEMS'), kv);
        break;
      }
      case 0x8f: // EMPTY_SET: no set ever holds a tensor, so refusing costs nothing
        throw refuse('builds a set (EMPTY_SET), which a tensor file never needs');
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const i = op === 0x68 ? u8() : u32();
        const v = memo.get(i);
        if (v === undefined) throw corrupt(`it reads memo slot ${i}, which was never written`);
        stack.push(v);
        break;
      }
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line();
        stack.push(global(module, line()));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string')
          throw corrupt('STACK_GLOBAL needs two strings');
        stack.push(global(module, name));
        break;
      }
      case 0x51: {
        // BINPERSID
        const pid = pop();
        if (opts.persistentLoad === undefined)
          throw refuse('loads a persistent id (BINPERSID), which this file kind has none of');
        stack.push(opts.persistentLoad(pid));
        break;
      }
      case 0x52: {
        // REDUCE: only an allowed global can be called, and only its TypeScript stand-in runs.
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PickleGlobal))
          throw refuse('calls (REDUCE) something that is not an allowed global');
        if (!(args instanceof PickleTuple)) throw corrupt(`REDUCE of ${fn.qualname} has no argument tuple`);
        stack.push(fn.call(args.items));
        break;
      }
      case 0x62: {
        // BUILD: sets an object's state; only objects made by an allowed global accept it.
        const state = pop();
        const obj = top();
        if (obj instanceof Map && state instanceof Map) {
          // OrderedDict subclasses carry their items as state.
          for (const [k, v] of state) obj.set(k, v);
          break;
        }
        if (obj !== null && typeof obj === 'object' && 'pickleObject' in obj && obj.build !== undefined) {
          obj.build(state);
          break;
        }
        throw refuse('sets the state (BUILD) of an object that does not take one');
      }
      default: {
        const name = REFUSED[op];
        throw refuse(
          name !== undefined
            ? `uses opcode ${name} (0x${op.toString(16)}) at byte ${at}, which a weights-only torch file never needs`
            : `holds byte 0x${op.toString(16)} at offset ${at}, which is not a pickle opcode this reader accepts`,
        );
      }
    }
  }
}

/** Dict keys as JS Map keys: numbers and strings compare by value; anything else is refused. */
function key(k: PickleValue): PickleValue {
  if (
    typeof k === 'string' ||
    typeof k === 'number' ||
    typeof k === 'bigint' ||
    typeof k === 'boolean' ||
    k === null
  ) {
    return k;
  }
  // Tuples as keys would compare by identity in a Map; a tensor file never keys a dict by a tuple.
  throw new EmlensError(
    'A pickled dict has a key that is not a string or a number; emlens reads only such dicts.',
  );
}
