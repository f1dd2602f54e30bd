"""Golden outputs from real Hugging Face transformers and peft, for test/model/hfGoldens.test.ts.

Each case is a tiny model made and initialised by transformers itself (not by emlens), saved with
`save_pretrained`, and run in float32 with forward hooks on every decoder layer, attention and MLP. The hook
outputs, `hidden_states[0]` and the logits at every position are written to `golden.safetensors` beside the
model folder. One case adds a PEFT LoRA adapter (random A and B, rsLoRA scaling) and records the unmerged
PeftModel's forward, so the test checks emlens's merge against peft itself.

Run from the repository root with a Python that has torch, transformers, peft and safetensors:

    python test/goldens/make_goldens.py

CI and users never run this: its outputs are committed. It writes test/goldens/hf/<case>/ and
test/goldens/hf/versions.json (the library versions that made them).
"""

import json
import shutil
from pathlib import Path

import peft
import safetensors
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

OUT = Path(__file__).resolve().parent / "hf"
VOCAB = 96

CASES = {
    # GQA 3:1, head_dim d/heads, untied, q/k/v biases (Qwen2 always has them)
    "qwen2-gqa3": dict(
        cls=Qwen2Config,
        kw=dict(
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=80,
            num_hidden_layers=3,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
        dtype=torch.float32,
    ),
    # MQA, head_dim 16 != 40 / 4, attention and MLP biases, Llama-3 rope scaling, tied head
    "llama-mqa-headdim-llama3rope": dict(
        cls=LlamaConfig,
        kw=dict(
            hidden_size=40,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=72,
            num_hidden_layers=2,
            attention_bias=True,
            mlp_bias=True,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
            max_position_embeddings=128,
            tie_word_embeddings=True,
        ),
        dtype=torch.float32,
    ),
    # GQA 2:1, head_dim 12 != 32 / 4, stored in bfloat16 (run in float32 from the bf16 weights)
    "mistral-bf16-headdim": dict(
        cls=MistralConfig,
        kw=dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,
            intermediate_size=64,
            num_hidden_layers=2,
            sliding_window=None,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
        dtype=torch.bfloat16,
    ),
}

# Two rows of equal length (no padding: transformers' forward does not derive position ids from a mask)
IDS = torch.tensor(
    [
        [3, 17, 42, 5, 88, 61, 9, 30, 71, 2, 55],
        [90, 1, 33, 47, 12, 8, 64, 29, 77, 50, 6],
    ]
)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Draws every parameter with a scale that makes each nonlinearity matter (HF init is near-linear)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / (p.shape[-1] ** 0.5))


def record(model: torch.nn.Module, layers) -> tuple[dict, list]:
    """Forward hooks on each decoder layer (resid_post), its attention (attn_out) and MLP (mlp_out)."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        def hook(name):
            def f(_m, _inp, output):
                t = output[0] if isinstance(output, tuple) else output
                out[name] = t.detach().to(torch.float32).clone()
            return f
        handles.append(layer.register_forward_hook(hook(f"blocks.{i}.hook_resid_post")))
        handles.append(layer.self_attn.register_forward_hook(hook(f"blocks.{i}.hook_attn_out")))
        handles.append(layer.mlp.register_forward_hook(hook(f"blocks.{i}.hook_mlp_out")))
    return out, handles


def run(model, layers) -> dict[str, torch.Tensor]:
    hooks, handles = record(model, layers)
    with torch.no_grad():
        r = model(input_ids=IDS, output_hidden_states=True, use_cache=False)
    for h in handles:
        h.remove()
    tensors = {k: v.contiguous() for k, v in hooks.items()}
    tensors["blocks.0.hook_resid_pre"] = r.hidden_states[0].to(torch.float32).contiguous()
    tensors["logits"] = r.logits.to(torch.float32).contiguous()  # [batch, pos, vocab]
    tensors["input_ids"] = IDS.to(torch.int64).contiguous()
    return tensors


def make_case(name: str, case: dict, seed: int) -> None:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    config = case["cls"](vocab_size=VOCAB, rms_norm_eps=1e-6, **case["kw"])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomise(model, seed)
    model.to(case["dtype"]).save_pretrained(folder / "model", safe_serialization=True)
    # the reference run reads the saved files back in float32, as a researcher loading them would
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
    save_file(run(model, model.model.layers), str(folder / "golden.safetensors"))


def make_adapter_case(base: str, seed: int) -> None:
    """A PEFT adapter on `base`: rank 4 on every projection, rsLoRA, layer 1 with its own rank and alpha."""
    folder = OUT / f"{base}-lora"
    shutil.rmtree(folder, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(OUT / base / "model", dtype=torch.float32).eval()
    lcfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        rank_pattern={"model.layers.1.mlp.down_proj": 2},
        alpha_pattern={"model.layers.1.mlp.down_proj": 3},
        init_lora_weights=False,  # random A and B, so the adapter changes every output
        lora_dropout=0.0,
    )
    torch.manual_seed(seed)
    pm = peft.get_peft_model(model, lcfg)
    pm.save_pretrained(folder / "adapter")
    # peft's model-card stub and the absolute base path say nothing about the numbers: keep the folder portable
    (folder / "adapter" / "README.md").unlink(missing_ok=True)
    acfg = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = f"../../{base}/model"
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    pm.eval()
    save_file(run(pm, pm.base_model.model.model.layers), str(folder / "golden.safetensors"))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, case) in enumerate(CASES.items()):
        make_case(name, case, seed=100 + i)
    make_adapter_case("qwen2-gqa3", seed=200)
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
    }
    (OUT / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
