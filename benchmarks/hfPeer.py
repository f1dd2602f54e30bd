"""The PyTorch peer of `npm run bench:quantized` (a benchmark peer, not a product dependency).

Builds a randomly initialised Hugging Face Qwen2ForCausalLM of the shape given as JSON in argv[1] (fp32, sdpa,
a forward hook registered on every decoder layer that keeps its output, as an interpretability run would),
then serves measurement rounds: for each line `round <prefill,lengths> <decode prompt> <decode tokens>` read on
stdin it prints one JSON line with prefill and decode tokens/s. The caller interleaves these rounds with its own.

    EMLENS_BENCH_PYTHON=/tmp/hfvenv/bin/python npm run bench:quantized
"""

import json
import sys
import time

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM


def main() -> None:
    shape = json.loads(sys.argv[1])
    torch.set_num_threads(int(shape.get("threads", 2)))
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=shape["dModel"],
        intermediate_size=shape["intermediateSize"],
        num_hidden_layers=shape["numLayers"],
        num_attention_heads=shape["numHeads"],
        num_key_value_heads=shape["numKvHeads"],
        vocab_size=shape["vocabSize"],
        tie_word_embeddings=shape["tieWordEmbeddings"],
        max_position_embeddings=4096,
        rope_theta=shape["ropeTheta"],
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config).eval()
    captured: list = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    for layer in model.model.layers:
        layer.register_forward_hook(hook)
    vocab = shape["vocabSize"]
    ids = lambda n, seed: torch.tensor([[(i * 7919 + seed * 104729 + 11) % vocab for i in range(n)]])
    print(
        json.dumps({"ready": True, "torch": torch.__version__, "transformers": transformers.__version__}),
        flush=True,
    )
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "round":
            continue
        lengths = [int(x) for x in parts[1].split(",")]
        prompt_len, new_tokens = int(parts[2]), int(parts[3])
        out = {"prefill": {}}
        with torch.inference_mode():
            for n in lengths:
                x = ids(n, 1)
                best = float("inf")
                for _ in range(2):
                    captured.clear()
                    t = time.perf_counter()
                    model(input_ids=x, use_cache=False, logits_to_keep=1)
                    best = min(best, time.perf_counter() - t)
                out["prefill"][str(n)] = n / best
            captured.clear()
            r = model(input_ids=ids(prompt_len, 2), use_cache=True, logits_to_keep=1)
            past = r.past_key_values
            token = r.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(new_tokens):
                captured.clear()
                r = model(input_ids=token, past_key_values=past, use_cache=True)
                past = r.past_key_values
                token = r.logits[:, -1].argmax(-1, keepdim=True)
            out["decodeTokensPerSecond"] = new_tokens / (time.perf_counter() - t)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
