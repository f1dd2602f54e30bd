"""Golden torch.save files for emlens's PyTorch reader (src/io/torchPt.ts), and a check of its writer.

    python test/goldens/make_pt_goldens.py                # writes test/goldens/pt/*.pt and expected.json
    python test/goldens/make_pt_goldens.py --verify DIR   # torch.load(weights_only=True) every DIR/*.pt and
                                                          # compare it with DIR/<name>.json

The tests never run Python: they read the committed files. `--verify` is for checking by hand that the files
emlens writes (test/goldens/write_pt_for_torch.ts writes them from expected.json) load in real torch.

expected.json encodes values as: tensor -> {"tensor": {"dtype", "shape", "values" (flat, row-major),
"storage" (key of its storage in the archive)}}, dict -> {"dict": [[key, value], ...]}, tuple ->
{"tuple": [...]}, list -> [...], and JSON scalars as themselves.
"""

import json
import os
import pickle
import sys
import zipfile

import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pt")
DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def encode(v, storage_keys):
    if isinstance(v, torch.Tensor):
        return {
            "tensor": {
                "dtype": DTYPES[v.dtype],
                "shape": list(v.shape),
                "values": v.detach().double().flatten().tolist(),
                "storage": storage_keys.get(v.untyped_storage().data_ptr(), ""),
            }
        }
    if isinstance(v, dict):
        return {"dict": [[k, encode(x, storage_keys)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"tuple": [encode(x, storage_keys) for x in v]}
    if isinstance(v, list):
        return [encode(x, storage_keys) for x in v]
    return v


def storage_keys_of(path, weights_only=True):
    """The archive key of every storage, as torch.load sees it (keys are assigned in pickling order)."""
    keys = {}
    loaded = torch.load(path, weights_only=weights_only)

    def walk(v):
        if isinstance(v, torch.Tensor):
            keys.setdefault(v.untyped_storage().data_ptr(), str(len(keys)))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(loaded)
    return loaded, keys


class Evil:
    """What a malicious checkpoint does: unpickling calls fn(arg). torch.save pickles it faithfully."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def goldens():
    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4
    shared = torch.arange(10, dtype=torch.float32) - 4.5
    return {
        "dtypes": {
            "f32": r(5),
            "f16": r(5, dtype=torch.float16),
            "bf16": r(5, dtype=torch.bfloat16),
            "f64": r(5, dtype=torch.float64),
            "scalar": torch.tensor(3.25),
            "matrix": r(2, 3),
            "empty": torch.zeros(0, 4),
        },
        "list": [r(4), r(4), r(4)],
        "views": {
            "transposed": base.t(),
            "strided": base[1:, ::2],
            "row": base[2],
            "column_f16": base.half()[:, 1],
        },
        "shared": {"base": shared, "head": shared[:3], "tail": shared[6:], "pair": shared.view(5, 2)},
        "nested": {
            "layers": {0: r(3), 1: r(3)},
            "meta": {"name": "em", "n": 3, "big": 2**40, "neg": -7, "frac": 0.5, "ok": True, "nothing": None},
            "pair": (r(2), r(2, dtype=torch.float64)),
            "params": torch.nn.Parameter(r(2, 2)),
        },
        # model-organisms-for-EM style: torch.save(list of per-layer mean differences [d_model]).
        "mo_directions": [r(8) for _ in range(4)],
        "stacked": r(4, 8),
        "layer_dict": {"layer_0": r(8), "layer_1": r(8), "layer_2": r(8)},
        "int_keys": {3: r(8), 5: r(8)},
    }


def write_goldens():
    os.makedirs(HERE, exist_ok=True)
    expected = {}
    for name, value in goldens().items():
        path = os.path.join(HERE, f"{name}.pt")
        torch.save(value, path)
        loaded, keys = storage_keys_of(path)
        expected[name] = encode(loaded, keys)
    # Pickle protocol 4 (STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE, FRAME), as torch.save(pickle_protocol=4).
    p4 = {"a": torch.arange(3, dtype=torch.float32), "b": [torch.ones(2, dtype=torch.float64)]}
    path = os.path.join(HERE, "protocol4.pt")
    torch.save(p4, path, pickle_protocol=4)
    # torch's weights-only unpickler refuses FRAME (protocol 4); this file is our own, so a full load is safe.
    loaded, keys = storage_keys_of(path, weights_only=False)
    expected["protocol4"] = encode(loaded, keys)
    # Malicious files: unpickling them with plain pickle would run the call. They must be refused.
    torch.save({"x": torch.ones(2), "y": Evil(os.system, "echo pwned")}, os.path.join(HERE, "evil_system.pt"))
    torch.save(Evil(eval, "__import__('os').getcwd()"), os.path.join(HERE, "evil_eval.pt"))
    torch.save({"ints": torch.arange(3)}, os.path.join(HERE, "int64.pt"))
    for evil in ("evil_system", "evil_eval"):
        try:
            torch.load(os.path.join(HERE, f"{evil}.pt"), weights_only=True)
            raise SystemExit(f"torch.load(weights_only=True) accepted {evil}.pt")
        except pickle.UnpicklingError:
            pass
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump({"torch": torch.__version__, "files": expected}, f, indent=1)
        f.write("\n")
    with zipfile.ZipFile(os.path.join(HERE, "dtypes.pt")) as z:
        print("records:", z.namelist())
    print(f"wrote {len(expected)} goldens to {HERE} with torch {torch.__version__}")


def equal(a, b, where):
    if isinstance(b, dict) and "tensor" in b:
        t = b["tensor"]
        if not isinstance(a, torch.Tensor):
            raise SystemExit(f"{where}: expected a tensor, got {type(a).__name__}")
        if DTYPES[a.dtype] != t["dtype"] or list(a.shape) != t["shape"]:
            raise SystemExit(f"{where}: {DTYPES[a.dtype]} {list(a.shape)} != {t['dtype']} {t['shape']}")
        want = torch.tensor(t["values"], dtype=torch.float64).reshape(t["shape"]).to(a.dtype)
        if not torch.equal(a, want):
            raise SystemExit(f"{where}: values differ")
        return 1
    if isinstance(b, dict) and "dict" in b:
        if not isinstance(a, dict) or [k for k, _ in b["dict"]] != list(a.keys()):
            raise SystemExit(f"{where}: dict keys differ")
        return sum(equal(a[k], v, f"{where}[{k!r}]") for k, v in b["dict"])
    if isinstance(b, dict) and "tuple" in b:
        if not isinstance(a, tuple) or len(a) != len(b["tuple"]):
            raise SystemExit(f"{where}: expected a tuple of {len(b['tuple'])}")
        return sum(equal(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b["tuple"])))
    if isinstance(b, list):
        if not isinstance(a, list) or len(a) != len(b):
            raise SystemExit(f"{where}: expected a list of {len(b)}")
        return sum(equal(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if a != b:
        raise SystemExit(f"{where}: {a!r} != {b!r}")
    return 0


def verify(folder):
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".pt"))
    tensors = 0
    for name in names:
        loaded = torch.load(os.path.join(folder, f"{name}.pt"), weights_only=True)
        with open(os.path.join(folder, f"{name}.json")) as f:
            tensors += equal(loaded, json.load(f), name)
    print(f"torch {torch.__version__}: {len(names)} files, {tensors} tensors load with weights_only=True and match")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--verify":
        verify(sys.argv[2])
    else:
        write_goldens()
