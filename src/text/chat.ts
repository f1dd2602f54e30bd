/**
 * Chat rendering as transformers' `apply_chat_template` does it: the tokenizer's own Jinja chat template,
 * rendered with the variables transformers passes, then tokenized without adding special tokens (the template
 * already writes BOS where the model expects it).
 */
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { EmlensError } from '../errors.js';
import type { TextTokenizer } from './tokenizer.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface RenderChatOptions {
  /** Append the header that opens the assistant's turn (transformers' `add_generation_prompt`). */
  addGenerationPrompt: boolean;
  /**
   * Extra template variables, as transformers' `**kwargs` (e.g. Qwen3's `enable_thinking: false`, Llama 3.1's
   * `date_string`); they override the defaults below.
   */
  templateVars?: Readonly<Record<string, unknown>>;
}

const ROLES: ReadonlySet<string> = new Set(['system', 'user', 'assistant']);

/** Variables the caller of a render sets itself, which template variables may not replace. */
const RESERVED_TEMPLATE_VARS: readonly string[] = ['messages', 'add_generation_prompt'];

/**
 * Checks extra chat-template variables (transformers' `apply_chat_template(**kwargs)`, the CLI's
 * `--chat-template-kwargs`): a plain object of JSON-like values that sets neither `messages` nor
 * `add_generation_prompt`. Returns the problem in words, or null when they are fine.
 */
export function templateVarsProblem(vars: unknown): string | null {
  if (typeof vars !== 'object' || vars === null || Array.isArray(vars)) {
    return `is ${vars === null ? 'null' : Array.isArray(vars) ? 'an array' : `a ${typeof vars}`}, not an object of template variables`;
  }
  const reserved = RESERVED_TEMPLATE_VARS.filter((k) => Object.hasOwn(vars, k));
  if (reserved.length > 0) {
    return `sets ${reserved.join(' and ')}, which the conversation itself decides`;
  }
  return null;
}

/** Parsed templates by source text: parsing Qwen3's template per record would cost more than rendering it. */
const parsed = new Map<string, Template>();

function templateFor(source: string): Template {
  let t = parsed.get(source);
  if (t === undefined) {
    try {
      t = new Template(source);
    } catch (e) {
      throw new EmlensError(
        `The tokenizer's chat template does not parse (${(e as Error).message}); fix chat_template in tokenizer_config.json.`,
      );
    }
    if (parsed.size >= 16) parsed.clear();
    parsed.set(source, t);
  }
  return t;
}

/** The part of jinja's Interpreter used here (its .d.ts imports `./runtime` without an extension, which NodeNext does not resolve). */
interface JinjaValue {
  readonly type: string;
  readonly value: unknown;
}
interface JinjaNode {
  readonly type: string;
  readonly value?: unknown;
  readonly callee?: JinjaNode;
  readonly object?: JinjaNode;
  readonly property?: JinjaNode;
  readonly computed?: boolean;
  readonly args?: readonly JinjaNode[];
}
interface JinjaInterpreter {
  run(program: Template['parsed']): JinjaValue;
  evaluate(statement: unknown, environment: Environment): JinjaValue;
  evaluateCallExpression(expr: JinjaNode, environment: Environment): JinjaValue;
  evaluateArguments(
    args: readonly JinjaNode[],
    environment: Environment,
  ): [JinjaValue[], Map<string, JinjaValue>];
  applyFilter(operand: JinjaValue, filter: JinjaNode, environment: Environment): JinjaValue;
}
const InterpreterBase = Interpreter as unknown as new (env: Environment) => JinjaInterpreter;

/**
 * Bounds on one render. @huggingface/jinja renders synchronously with no limits of its own, so a template that
 * never ends (`{% for i in range(100000000) %}`) held the thread until the heap ran out. Rendering is on hot
 * paths (collect renders every record), so the bounds are checked in the interpreter itself rather than by a
 * worker per render: `range()` refuses to build a huge list before allocating it, every value the template
 * makes is capped in length (strings and lists), the characters it makes in all are capped (that bounds what
 * a loop accumulates, which no single value shows), and a clock checked every few thousand steps bounds time.
 * The length caps scale with the conversation, so a long answer renders as before.
 */
export const TEMPLATE_LIMITS = {
  /** Items a `range()` may produce: chat templates loop over messages, never over millions of numbers. */
  rangeItems: 100_000,
  /** Items any list value may hold. */
  listItems: 1_000_000,
  /** Characters any one string value may hold: this much plus `charsPerInputChar` per input character. */
  baseChars: 1 << 20,
  charsPerInputChar: 4,
  /** Characters made in all (intermediate values included), as a multiple of the one-value cap. */
  totalCharsFactor: 16,
  /** Wall-clock time a render may take. */
  timeMs: 2000,
  /** Work units (evaluate calls, list items) between clock readings. */
  stepsPerClockCheck: 4096,
};

const FIX_TEMPLATE = 'fix chat_template in tokenizer_config.json (or chat_template.jinja)';

class BoundedInterpreter extends InterpreterBase {
  /** Work done: evaluate() calls plus the items of every list made or read. */
  private steps = 0;
  private nextClockCheck = 0;
  private made = 0;
  private readonly deadline: number;
  private readonly maxMade: number;

  constructor(
    env: Environment,
    private readonly maxChars: number,
  ) {
    super(env);
    this.deadline = performance.now() + TEMPLATE_LIMITS.timeMs;
    this.maxMade = maxChars * TEMPLATE_LIMITS.totalCharsFactor;
  }

  override evaluate(statement: unknown, environment: Environment): JinjaValue {
    if (this.steps >= this.nextClockCheck) {
      if (performance.now() > this.deadline) {
        throw new EmlensError(
          `The chat template did not finish rendering within ${TEMPLATE_LIMITS.timeMs / 1000} s (it loops far more than a conversation needs); ${FIX_TEMPLATE}.`,
        );
      }
      this.nextClockCheck = this.steps + TEMPLATE_LIMITS.stepsPerClockCheck;
    }
    const v = super.evaluate(statement, environment);
    this.steps++;
    if (v.type === 'StringValue') {
      const n = (v.value as string).length;
      this.made += n;
      if (n > this.maxChars || this.made > this.maxMade) {
        throw new EmlensError(
          `The chat template made ${n > this.maxChars ? `a string of ${n}` : `${this.made}`} characters, far more than this conversation can need (at most ${n > this.maxChars ? this.maxChars : this.maxMade}); ${FIX_TEMPLATE}.`,
        );
      }
    } else if (v.type === 'ArrayValue' || v.type === 'ObjectValue') {
      const n =
        v.type === 'ArrayValue' ? (v.value as unknown[]).length : (v.value as Map<string, unknown>).size;
      if (n > TEMPLATE_LIMITS.listItems) {
        throw new EmlensError(
          `The chat template made a list of ${n} items, more than the ${TEMPLATE_LIMITS.listItems} a chat template may use; ${FIX_TEMPLATE}.`,
        );
      }
      // A loop over this value does work per item with no evaluate() call when its body is empty: count that
      // work too, or nested loops run for minutes between two clock checks.
      this.steps += n;
    }
    return v;
  }

  /** `s.strip(chars)`, `s.lstrip(chars)`, `s.rstrip(chars)` on a string, as Python does them. */
  override evaluateCallExpression(expr: JinjaNode, environment: Environment): JinjaValue {
    const callee = expr.callee;
    const name = callee?.property?.value;
    if (
      callee?.type === 'MemberExpression' &&
      !callee.computed &&
      callee.property?.type === 'Identifier' &&
      typeof name === 'string' &&
      name !== 'trim' &&
      Object.hasOwn(STRIP_SIDES, name)
    ) {
      const object = this.evaluate(callee.object, environment);
      if (object.type === 'StringValue') {
        return this.stripped(object, name, expr.args ?? [], environment);
      }
    }
    return super.evaluateCallExpression(expr, environment);
  }

  /** The `trim` and `trim(chars)` filters, as jinja2's (Python's `str.strip`). */
  override applyFilter(operand: JinjaValue, filter: JinjaNode, environment: Environment): JinjaValue {
    if (operand.type === 'StringValue') {
      if (filter.type === 'Identifier' && filter.value === 'trim') {
        return this.stripped(operand, 'trim', [], environment);
      }
      if (
        filter.type === 'CallExpression' &&
        filter.callee?.type === 'Identifier' &&
        filter.callee.value === 'trim'
      ) {
        return this.stripped(operand, 'trim', filter.args ?? [], environment);
      }
    }
    return super.applyFilter(operand, filter, environment);
  }

  private stripped(
    string: JinjaValue,
    name: string,
    argNodes: readonly JinjaNode[],
    environment: Environment,
  ): JinjaValue {
    const [args, kwargs] = this.evaluateArguments(argNodes, environment);
    const chars = args[0] ?? kwargs.get('chars');
    if (args.length + kwargs.size > 1 || (kwargs.size === 1 && !kwargs.has('chars'))) {
      throw new Error(`${name}() takes at most one argument (the characters to strip)`);
    }
    if (chars !== undefined && chars.type !== 'StringValue' && chars.type !== 'NullValue') {
      throw new Error(`${name}() argument must be a string or none`);
    }
    const sides = STRIP_SIDES[name];
    if (!sides) throw new Error(`${name} is not a strip filter`); // only strip/lstrip/rstrip reach here
    const [left, right] = sides;
    const set = chars?.type === 'StringValue' ? (chars.value as string) : null;
    const StringValue = string.constructor as new (value: string) => JinjaValue;
    return new StringValue(pythonStrip(string.value as string, set, left, right));
  }
}

/** Characters Python's `str.isspace` counts (what `strip()` drops with no argument; JS `trim()` differs). */
const PY_WHITESPACE: ReadonlySet<number> = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002,
  0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

/**
 * Python's `str.strip` / `lstrip` / `rstrip`: `chars` (null: whitespace) is a set of characters dropped from
 * the chosen ends. @huggingface/jinja ignores the argument (Qwen3's `content.lstrip('\n')` dropped spaces
 * too) and trims JS whitespace (U+FEFF, not U+001C..U+001F or U+0085), so templates render differently
 * from transformers without this.
 */
export function pythonStrip(text: string, chars: string | null, left: boolean, right: boolean): string {
  const drop =
    chars === null
      ? (c: number) => PY_WHITESPACE.has(c)
      : (
          (set: Set<number>) => (c: number) =>
            set.has(c)
        )(new Set(Array.from(chars, (ch) => ch.codePointAt(0) as number)));
  let start = 0;
  let end = text.length;
  if (left) {
    while (start < end) {
      const c = text.codePointAt(start) as number;
      if (!drop(c)) break;
      start += c > 0xffff ? 2 : 1;
    }
  }
  if (right) {
    while (end > start) {
      const low = text.charCodeAt(end - 1);
      const high = end - 2 >= start ? text.charCodeAt(end - 2) : 0;
      const pair = low >= 0xdc00 && low <= 0xdfff && high >= 0xd800 && high <= 0xdbff;
      const c = pair ? (text.codePointAt(end - 2) as number) : low;
      if (!drop(c)) break;
      end -= pair ? 2 : 1;
    }
  }
  return text.slice(start, end);
}

const STRIP_SIDES: Readonly<Record<string, readonly [boolean, boolean]>> = {
  strip: [true, true],
  lstrip: [true, false],
  rstrip: [false, true],
  trim: [true, true],
};

/** Jinja's `range`, refusing before it allocates a list longer than {@link TEMPLATE_LIMITS}.rangeItems. */
function boundedRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) {
    stop = start;
    start = 0;
  }
  if (step === 0) throw new Error('range() step must not be zero');
  const count = Math.max(0, Math.ceil((stop - start) / step));
  if (!(count <= TEMPLATE_LIMITS.rangeItems)) {
    throw new EmlensError(
      `The chat template calls range() for ${count} items, more than the ${TEMPLATE_LIMITS.rangeItems} a chat template may loop over; ${FIX_TEMPLATE}.`,
    );
  }
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(start + i * step);
  return out;
}

/** `strftime_now` as @huggingface/jinja writes it (the codes chat templates use: %Y %m %d %b %B %H %M %%). */
function strftimeNow(format: string): string {
  const date = new Date();
  const pad2 = (n: number) => String(n).padStart(2, '0');
  return String(format).replace(/%[YmdbBHM%]/g, (token) => {
    switch (token) {
      case '%Y':
        return String(date.getFullYear());
      case '%m':
        return pad2(date.getMonth() + 1);
      case '%d':
        return pad2(date.getDate());
      case '%b':
        return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(date);
      case '%B':
        return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(date);
      case '%H':
        return pad2(date.getHours());
      case '%M':
        return pad2(date.getMinutes());
      default:
        return '%';
    }
  });
}

/** `Template.render` with the globals it sets (setupGlobals is not exported) and the bounds above. */
function renderBounded(
  template: Template,
  vars: Readonly<Record<string, unknown>>,
  inputChars: number,
): string {
  const env = new Environment();
  env.set('false', false);
  env.set('true', true);
  env.set('none', null);
  env.set('False', false);
  env.set('True', true);
  env.set('None', null);
  env.set('raise_exception', (message: string) => {
    throw new Error(message);
  });
  env.set('range', boundedRange);
  env.set('strftime_now', strftimeNow);
  for (const [k, v] of Object.entries(vars)) env.set(k, v);
  const maxChars = TEMPLATE_LIMITS.baseChars + TEMPLATE_LIMITS.charsPerInputChar * inputChars;
  const result = new BoundedInterpreter(env, maxChars).run(template.parsed);
  return String(result.value);
}

function checkMessages(messages: readonly ChatMessage[]): void {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new EmlensError('The conversation has no messages; pass at least one {role, content} message.');
  }
  messages.forEach((m, i) => {
    if (typeof m !== 'object' || m === null || !ROLES.has(m.role)) {
      throw new EmlensError(
        `Message ${i} has role ${JSON.stringify((m as { role?: unknown })?.role)}; use 'system', 'user' or 'assistant'.`,
      );
    }
    if (typeof m.content !== 'string') {
      throw new EmlensError(
        `Message ${i} (${m.role}) has no string content; give every message text content.`,
      );
    }
  });
}

/**
 * The conversation as the model's chat template renders it. The variables are those transformers passes:
 * `messages`, `add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`
 * as strings, absent where the config names none, and `additional_special_tokens`), `tools` and `documents`
 * as None (transformers passes None, not undefined: templates test `tools is not none`), plus `raise_exception`
 * and `strftime_now` from @huggingface/jinja.
 */
export function renderChat(
  tokenizer: TextTokenizer,
  messages: readonly ChatMessage[],
  opts: RenderChatOptions,
): string {
  const source = tokenizer.chatTemplate;
  if (source === null) {
    throw new EmlensError(
      'The tokenizer has no chat_template (neither in tokenizer_config.json nor in chat_template.jinja); use a chat/instruct model or add its chat template.',
    );
  }
  checkMessages(messages);
  if (opts.templateVars !== undefined) {
    const problem = templateVarsProblem(opts.templateVars);
    if (problem !== null) {
      throw new EmlensError(
        `The chat template variables ${problem}; pass an object such as {"enable_thinking": false}.`,
      );
    }
  }
  const special = tokenizer.specialTokens;
  const vars: Record<string, unknown> = {
    messages: messages.map((m) => ({ role: m.role, content: m.content })),
    add_generation_prompt: opts.addGenerationPrompt,
    tools: null,
    documents: null,
    additional_special_tokens: [...special.additional],
  };
  if (special.bos !== null) vars.bos_token = special.bos;
  if (special.eos !== null) vars.eos_token = special.eos;
  if (special.pad !== null) vars.pad_token = special.pad;
  if (special.unk !== null) vars.unk_token = special.unk;
  Object.assign(vars, opts.templateVars);
  const template = templateFor(source);
  let inputChars = 0;
  for (const m of messages) inputChars += m.content.length;
  try {
    return renderBounded(template, vars, inputChars);
  } catch (e) {
    if (e instanceof EmlensError) throw e;
    throw new EmlensError(
      `The chat template rejected the conversation (${(e as Error).message}); change the messages' roles or order to what the model's template supports.`,
    );
  }
}

/**
 * Token ids of the rendered conversation, encoded without adding special tokens as `apply_chat_template`
 * does, so a BOS the template writes (Llama 3) appears exactly once. The same as the tokenizer's own
 * `tok.encodeChat(messages, opts)`, which also defaults `addGenerationPrompt` from the last message's role.
 */
export function encodeChat(
  tokenizer: TextTokenizer,
  messages: readonly ChatMessage[],
  opts: RenderChatOptions,
): number[] {
  return tokenizer.encode(renderChat(tokenizer, messages, opts), { addSpecialTokens: false });
}
