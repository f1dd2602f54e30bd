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
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    SiglipVisionConfig,
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
    # q_norm/k_norm, GQA 3:1, head_dim 12 != 48 / 6, q/k/v/o biases, sliding window 4 < 11 tokens from layer 1
    "qwen3-gqa3-headdim-bias-window": dict(
        cls=Qwen3Config,
        kw=dict(
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=12,
            intermediate_size=80,
            num_hidden_layers=3,
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
        dtype=torch.float32,
    ),
    # 1+w norms, four per block, GeGLU, sqrt(d) embeddings, query_pre_attn_scalar 24 (not head_dim), both
    # softcaps strong enough to matter, alternating window 5 < 11 tokens, GQA 2:1, head_dim 16, tied head
    "gemma2-softcap-window": dict(
        cls=Gemma2Config,
        kw=dict(
            hidden_size=40,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=72,
            num_hidden_layers=3,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=4.0,
            final_logit_softcapping=6.0,
            sliding_window=5,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
        ),
        dtype=torch.float32,
        # transformers' sdpa path drops attn_logit_softcapping without a word; eager is the model's definition
        # (and what transformers recommends for Gemma 2), so the golden runs it
        attn="eager",
    ),
    # transformers 5 layout (rope_parameters per layer type, layer_types), 5 local : 1 global over 7 layers,
    # local base 500, global 50000 with linear x4, window 4, MQA 5:1, head_dim 20 != 40 / 5... stored in bf16,
    # untied, final softcap (Gemma3ForCausalLM applies it)
    "gemma3-text-bf16-mqa-window": dict(
        cls=Gemma3TextConfig,
        kw=dict(
            hidden_size=40,
            num_attention_heads=5,
            num_key_value_heads=1,
            head_dim=20,
            intermediate_size=64,
            num_hidden_layers=7,
            query_pre_attn_scalar=20,
            sliding_window=4,
            rope_theta=50000.0,
            rope_local_base_freq=500.0,
            rope_scaling=dict(rope_type="linear", factor=4.0),
            final_logit_softcapping=8.0,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
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
    """Forward hooks on each decoder layer (resid_post), its attention (attn_out) and MLP (mlp_out).

    Gemma post-norms each sublayer's output before the residual add; emlens' hook_attn_out / hook_mlp_out
    are what is added, so on Gemma they are the outputs of post_attention_layernorm and
    post_feedforward_layernorm, and hook_resid_mid is the input of pre_feedforward_layernorm.
    """
    out: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        def hook(name):
            def f(_m, _inp, output):
                t = output[0] if isinstance(output, tuple) else output
                out[name] = t.detach().to(torch.float32).clone()
            return f

        def pre_hook(name):
            def f(_m, args):
                out[name] = args[0].detach().to(torch.float32).clone()
            return f
        handles.append(layer.register_forward_hook(hook(f"blocks.{i}.hook_resid_post")))
        if hasattr(layer, "post_feedforward_layernorm"):
            handles.append(layer.post_attention_layernorm.register_forward_hook(hook(f"blocks.{i}.hook_attn_out")))
            handles.append(layer.post_feedforward_layernorm.register_forward_hook(hook(f"blocks.{i}.hook_mlp_out")))
            handles.append(
                layer.pre_feedforward_layernorm.register_forward_pre_hook(pre_hook(f"blocks.{i}.hook_resid_mid"))
            )
        else:
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
    extra = {"attn_implementation": case["attn"]} if "attn" in case else {}
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32, **extra).eval()
    save_file(run(model, model.model.layers), str(folder / "golden.safetensors"))


# Gemma 3 as released: a Gemma3ForConditionalGeneration (tiny SigLIP tower, not run for text), 3 layers with
# sliding_window_pattern 2 (local, global, local), window 3 < 11 tokens, GQA 2:1, head_dim 12 != 32 / 4,
# global linear rope x8. Its config.json is rewritten to transformers 4.x's layout (sparse text_config over
# Gemma3TextConfig's defaults, rope_theta / rope_local_base_freq / rope_scaling / sliding_window_pattern) and
# its tensors renamed to transformers 5's `model.language_model.*` module names before transformers reloads
# it, so the golden checks both of those against transformers itself.
GEMMA3_MM = "gemma3-multimodal-4x-config"


def make_gemma3_multimodal_case(seed: int) -> None:
    folder = OUT / GEMMA3_MM
    shutil.rmtree(folder, ignore_errors=True)
    text = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        query_pre_attn_scalar=12,
        sliding_window=3,
        sliding_window_pattern=2,
        rope_theta=20000.0,
        rope_local_base_freq=100.0,
        rope_scaling=dict(rope_type="linear", factor=8.0),
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2, image_token_index=VOCAB - 1,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32)
    randomise(model, seed)
    model.save_pretrained(folder / "model", safe_serialization=True)
    # 4.x config layout, as google/gemma-3-4b-it ships it
    cfg = json.loads((folder / "model" / "config.json").read_text())
    tc = cfg["text_config"]
    rp = tc.pop("rope_parameters")
    tc.pop("layer_types")
    tc.pop("_sliding_window_pattern", None)
    tc["rope_theta"] = rp["full_attention"]["rope_theta"]
    tc["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
    tc["rope_scaling"] = {"factor": rp["full_attention"]["factor"], "rope_type": "linear"}
    tc["sliding_window_pattern"] = 2
    for key in ["attention_dropout", "initializer_range", "use_cache", "attn_logit_softcapping",
                "final_logit_softcapping", "hidden_activation", "max_position_embeddings", "rms_norm_eps",
                "use_bidirectional_attention", "tie_word_embeddings", "attention_bias"]:
        if tc.get(key) == getattr(Gemma3TextConfig(), key, object()) and key != "max_position_embeddings":
            tc.pop(key)  # absent keys take Gemma3TextConfig's defaults, as in the released configs
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    (folder / "model" / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # transformers 5's module names
    st = folder / "model" / "model.safetensors"
    tensors = load_file(str(st))
    renamed = {}
    for k, v in tensors.items():
        if k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model."):]
        elif k.startswith("vision_tower.") or k.startswith("multi_modal_projector."):
            k = "model." + k
        renamed[k] = v.contiguous()
    save_file(renamed, str(st), metadata={"format": "pt"})
    model = Gemma3ForConditionalGeneration.from_pretrained(folder / "model", dtype=torch.float32).eval()
    assert model.config.text_config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert model.config.text_config.rope_parameters["full_attention"]["rope_type"] == "linear"
    save_file(run(model, model.model.language_model.layers), str(folder / "golden.safetensors"))


def make_adapter_case(base: str, seed: int, multimodal: bool = False) -> None:
    """A PEFT adapter on `base`: rank 4 on every projection, rsLoRA, layer 1 with its own rank and alpha.

    On the multimodal Gemma 3 the same target names also select the SigLIP tower's q/k/v projections, as they
    would on a real checkpoint: emlens must set those aside and merge the text model's.
    """
    folder = OUT / f"{base}-lora"
    shutil.rmtree(folder, ignore_errors=True)
    if multimodal:
        model = Gemma3ForConditionalGeneration.from_pretrained(OUT / base / "model", dtype=torch.float32).eval()
        down1 = "language_model.layers.1.mlp.down_proj"
    else:
        model = AutoModelForCausalLM.from_pretrained(OUT / base / "model", dtype=torch.float32).eval()
        down1 = "model.layers.1.mlp.down_proj"
    lcfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        rank_pattern={down1: 2},
        alpha_pattern={down1: 3},
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
    acfg["target_modules"] = sorted(acfg["target_modules"])  # peft writes a set: keep reruns byte-identical
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    pm.eval()
    layers = pm.base_model.model.model.language_model.layers if multimodal else pm.base_model.model.model.layers
    save_file(run(pm, layers), str(folder / "golden.safetensors"))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, case) in enumerate(CASES.items()):
        make_case(name, case, seed=100 + i)
    make_gemma3_multimodal_case(seed=100 + len(CASES))
    make_adapter_case("qwen2-gqa3", seed=200)
    make_adapter_case(GEMMA3_MM, seed=201, multimodal=True)
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
