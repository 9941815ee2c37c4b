"""Teachers from any code: `torch.export.save` programs (`.pt2`), loaded without running code from the file.

`torch.export.load` is not used: it unpickles pickled weights and constants with
`torch.load(weights_only=False)`, falls back to that for the sample inputs, unpickles
"opaque" constants with `pickle.loads`, loads TorchScript objects and AOTInductor shared
libraries, and compiles the program's `guards_code` (Python source from the file) when
the module is built. This loader reads the archive itself, with explicit checks:

1. Archive: a zip whose members all sit under one root folder, stored uncompressed (as
   `torch.export.save` writes them, so the bytes on disk bound the bytes read: no zip
   bomb), at most `MAX_PROGRAM_BYTES` in all, and only the members a plain program has
   (format markers, `models/model.json`, weights, tensor constants, sample inputs,
   extra text files). AOTInductor libraries, TorchScript and opaque pickled objects are refused.
2. Tensors: raw bytes rebuilt with the recorded dtype/size/stride on the CPU; a tensor
   stored as a pickle, and the sample inputs, go through `torch.load(weights_only=True)`,
   whose unpickler rebuilds tensors and plain containers only: a `__reduce__` is refused, never run.
3. Program: every symbolic-size expression (`expr_str`, which torch's deserialiser hands to
   `sympy.sympify`, i.e. to `eval`) must parse as a plain arithmetic expression over symbol
   names, numbers and a fixed list of sympy/torch size functions (no attribute access, no
   other names); then the JSON graph is deserialised by torch's own deserialiser (it resolves
   operator names by attribute lookup on `torch`/`operator`/`math`, it imports nothing) with
   `guards_code` emptied, and every call in every graph must be an ATen/prims operator or
   a plain `operator` function (`getitem`, symbolic-size arithmetic).

The result is the program unflattened (`torch.export.unflatten`) into the original module
hierarchy, so `layer3` is the same path as in the team's code and forward hooks on it see
its activation; parameters are frozen (requires_grad False), the module in eval mode.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import operator
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import WeightsError

log = logging.getLogger(__name__)

EXPORTED_ARCH = "exported"  # the architecture name of a model record that is a program (no zoo name)
MAX_PROGRAM_BYTES = 4 * 1024**3
PROGRAM_SUFFIX = ".pt2"
RECIPE = ("export it with ep = torch.export.export(model.eval(), (torch.randn(2, C, H, W),), "
          "dynamic_shapes=({0: torch.export.Dim('batch', min=1)},)); torch.export.save(ep, 'teacher.pt2')")
_MODEL = "model"  # torch.export.save writes one program under this name
_MARKERS = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
_ALLOWED_DIRS = ("data/weights/", "data/constants/", "extra/")
_REFUSED_DIRS = {"data/aotinductor/": "AOTInductor compiled code", "xl_model_weights/": "external weight files"}
_PLAIN_OPERATOR_NAMESPACES = ("aten", "prims")
_REFUSED_OPERATORS = frozenset({"from_file", "_print"})  # ATen operators that touch the host (read a file, print)
_MAX_EXPRESSION_CHARS = 10_000
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+")  # torch's size symbols: s0, u3, zuf0 ...
_SYMBOL_ASSUMPTIONS = frozenset({"positive", "negative", "nonnegative", "integer", "real", "finite", "evaluate"})
_SIZE_FUNCTIONS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or",
    "Not", "True", "False", "true", "false", "oo", "nan", "floor", "ceiling", "Mod", "Piecewise",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift",
    "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatTrueDiv", "OpaqueUnaryFn_sqrt",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "Identity",
})
_PLAIN_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Load, ast.Constant,
    ast.keyword, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)


def is_exported_program(path: Path) -> bool:
    """A zip with `<root>/archive_format` = `pt2`: what torch.export.save writes."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = _root(names)
            marker = f"{root}/archive_format"
            return root is not None and marker in names and archive.read(marker).strip() == b"pt2"
    except (zipfile.BadZipFile, OSError, KeyError, ValueError):
        return False


def load_exported(path: Path, field: str = "teacher.weights") -> nn.Module:
    """The program at `path` as a frozen eval-mode module with its original submodule paths.

    Every problem with the file is a WeightsError naming `field` that says what the file is
    and what was expected; nothing from the file is executed (see the module docstring).
    """
    try:
        return _load(Path(path))
    except WeightsError as exc:
        raise WeightsError(exc.message, field=field) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: zipfile and torch's deserialiser raise many types
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"not a readable torch.export program (.pt2): {reason}", field=field) from exc


def _load(path: Path) -> nn.Module:
    with zipfile.ZipFile(path) as archive:
        root = _checked_archive(archive)
        program = _program(archive, root)
    _check_operators(program.graph_module)
    _check_batch_dimension(program)
    module = torch.export.unflatten(program)
    _drop_trace_metadata(module)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()
    module.example_input_shape = _input_shape(program)  # the probe forward of core.models.layers uses it
    return module


def _drop_trace_metadata(module: nn.Module) -> None:
    """Run each submodule's graph through its generated forward (torch's default interprets it node by node in
    Python, slower per batch), keep tensor constants as buffers (unflatten leaves them plain attributes, which
    `.to("cuda")` would not move), and forget the tracer's per-node metadata (fake tensors with symbolic sizes): running the graphs does not
    read it, and a module holding it cannot be deep-copied (the latency table copies models to a device).
    The input shape is checked against the dataset before the first forward (core.models.compat) instead."""
    module.check_input_constraints = False
    for submodule in module.modules():
        if hasattr(submodule, "_run_with_interpreter"):  # run the graph's generated forward, not node by node
            submodule._run_with_interpreter = False
        for name, value in list(vars(submodule).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                delattr(submodule, name)  # a lifted tensor constant: a buffer, so that .to(device) moves it too
                submodule.register_buffer(name, value, persistent=False)
        graph = getattr(submodule, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            for node in graph.nodes:
                node.meta.clear()


def program_dims(module: nn.Module) -> tuple[int, int]:
    """(num_classes, in_channels) of a loaded program: its output width and its input's channels."""
    shape = module.example_input_shape
    with torch.no_grad():
        parameter = next(module.parameters())
        logits = module(torch.zeros(1, *shape[1:], device=parameter.device))
    return int(logits.shape[-1]), int(shape[1])


def _root(names: list[str]) -> str | None:
    roots = {name.split("/", 1)[0] for name in names}
    return roots.pop() if len(roots) == 1 else None


def _checked_archive(archive: zipfile.ZipFile) -> str:
    """The archive's root folder, after the member checks (1. in the module docstring)."""
    infos = archive.infolist()
    root = _root([info.filename for info in infos])
    if root is None:
        raise WeightsError("not a torch.export program: the archive's members are not under one root folder")
    total = 0
    for info in infos:
        name = info.filename[len(root) + 1:]
        total += info.file_size
        if info.compress_type != zipfile.ZIP_STORED:
            raise WeightsError(f"'{name}' is compressed; torch.export.save stores members uncompressed")
        if total > MAX_PROGRAM_BYTES:
            raise WeightsError(f"the program holds more than {MAX_PROGRAM_BYTES // 1024**3} GiB")
        refused = next((what for prefix, what in _REFUSED_DIRS.items() if name.startswith(prefix)), None)
        if refused is not None:
            raise WeightsError(f"the archive holds {refused} ('{name}'), which is refused: only plain programs "
                               "written by torch.export.save are accepted")
        if not _allowed_member(name):
            raise WeightsError(f"unexpected member '{name}' in the archive: only plain programs written by "
                               "torch.export.save are accepted")
    if archive.read(f"{root}/archive_format").strip() != b"pt2":
        raise WeightsError("not a torch.export program: archive_format is not pt2")
    if f"{root}/models/{_MODEL}.json" not in archive.namelist():
        raise WeightsError(f"the archive holds no program named '{_MODEL}' (models/{_MODEL}.json)")
    return root


def _allowed_member(name: str) -> bool:
    if name in _MARKERS or name.startswith(".data/"):
        return True
    if name == f"models/{_MODEL}.json" or name == f"data/sample_inputs/{_MODEL}.pt":
        return True
    if name in (f"data/weights/{_MODEL}.pt", f"data/constants/{_MODEL}.pt"):
        return False  # the pre-2.8 layout: one pickled state dict
    return name.startswith(_ALLOWED_DIRS)


def _program(archive: zipfile.ZipFile, root: str) -> torch.export.ExportedProgram:
    """The ExportedProgram, deserialised from checked parts (2. and 3. in the module docstring)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    document = json.loads(archive.read(f"{root}/models/{_MODEL}.json"))
    _check_expressions(document)
    serialized = _dict_to_dataclass(schema.ExportedProgram, document)
    serialized.guards_code = []  # Python source from the file: never compiled
    state = _tensors(archive, root, "data/weights/", f"{_MODEL}_weights_config.json", constants=False)
    constants = _tensors(archive, root, "data/constants/", f"{_MODEL}_constants_config.json", constants=True)
    sample_name = f"{root}/data/sample_inputs/{_MODEL}.pt"
    samples = _weights_only(archive.read(sample_name), "the sample inputs") if sample_name in archive.namelist() else None
    if samples is not None and not isinstance(samples, tuple):
        raise WeightsError("the sample inputs are not an (args, kwargs) tuple")
    return ExportedProgramDeserializer().deserialize(serialized, state, constants, samples)


def _check_expressions(document: Any) -> None:
    """Every `expr_str` in the program's JSON is a plain size expression (see `_plain_expression`)."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            expression = node.get("expr_str")
            if isinstance(expression, str) and not _plain_expression(expression):
                raise WeightsError(f"the program holds a size expression that is not plain arithmetic "
                                   f"({expression[:80]!r}); it is refused")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _plain_expression(expression: str) -> bool:
    """Arithmetic over symbols (`s77`), numbers and _SIZE_FUNCTIONS calls, as torch writes them
    (`Symbol('s77', positive=True, integer=True)`, `FloorDiv(s0, 2)`): nothing eval could misuse."""
    if len(expression) > _MAX_EXPRESSION_CHARS:
        return False
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not (node.id in _SIZE_FUNCTIONS or _SYMBOL.fullmatch(node.id)):
            return False
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            return False
        if isinstance(node, ast.keyword) and node.arg not in _SYMBOL_ASSUMPTIONS:
            return False
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _SYMBOL.fullmatch(node.value):
            return False
        if not isinstance(node, _PLAIN_NODES):
            return False
    return True


def _tensors(archive: zipfile.ZipFile, root: str, folder: str, config_name: str, *, constants: bool) -> dict[str, Any]:
    """Weights or tensor constants by name: raw bytes rebuilt on the CPU, pickled ones read weights-only."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import _dict_to_dataclass

    config = _dict_to_dataclass(schema.PayloadConfig, json.loads(archive.read(f"{root}/{folder}{config_name}")))
    flat: dict[str, torch.Tensor] = {}
    result: dict[str, Any] = {}
    for name, meta in config.config.items():
        if "/" in meta.path_name or meta.path_name.startswith("."):
            raise WeightsError(f"tensor '{name}' points outside its folder")
        if constants and not meta.path_name.startswith("tensor_"):
            raise WeightsError(f"constant '{name}' is a pickled Python or TorchScript object, which is refused")
        raw = archive.read(f"{root}/{folder}{meta.path_name}")
        if meta.use_pickle:
            value = _weights_only(raw, f"tensor '{name}'")
            if not isinstance(value, torch.Tensor):
                raise WeightsError(f"tensor '{name}' is not a tensor")
            result[name] = value
            continue
        result[name] = _strided(flat, meta, raw)
        if meta.is_param and not constants:
            result[name] = nn.Parameter(result[name], requires_grad=False)
    return result


def _strided(flat: dict[str, torch.Tensor], meta: Any, raw: bytes) -> torch.Tensor:
    """One tensor of the payload config: its storage (shared by aliases) viewed with its size and strides."""
    from torch._export.serde.serialize import (
        deserialize_scalar_type, deserialize_size, deserialize_storage_offset, deserialize_stride,
    )

    tensor_meta = meta.tensor_meta
    if tensor_meta is None:
        raise WeightsError(f"tensor '{meta.path_name}' has no recorded dtype and shape")
    dtype = deserialize_scalar_type(tensor_meta.dtype)
    size = deserialize_size(tensor_meta.sizes)
    if meta.path_name not in flat:
        element = torch.empty((), dtype=dtype).element_size()
        if len(raw) % element:
            raise WeightsError(f"tensor '{meta.path_name}' holds {len(raw)} bytes, not whole {dtype} elements")
        flat[meta.path_name] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.zeros(size, dtype=dtype)
    storage = flat[meta.path_name]
    stride = deserialize_stride(tensor_meta.strides)
    offset = deserialize_storage_offset(tensor_meta.storage_offset)
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.numel():
        raise WeightsError(f"tensor '{meta.path_name}' is shorter than its recorded shape {tuple(size)}")
    return torch.as_strided(storage.reshape(-1), size, stride, offset)


def _weights_only(raw: bytes, what: str) -> Any:
    """A pickle read by torch's weights-only unpickler: tensors and plain containers, never code."""
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{what} in the archive is a pickle that is not weights-only (it would build "
                           "objects or run code); it is refused") from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: torch raises many types
        raise WeightsError(f"{what} in the archive is not a readable tensor pickle") from exc


def _check_operators(graph_module: torch.fx.GraphModule) -> None:
    """Every call of every graph is an ATen/prims operator or a plain `operator` function."""
    for module in graph_module.modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            plain_operator = callable(target) and getattr(target, "__module__", None) in ("_operator", "operator")
            aten = (isinstance(target, torch._ops.OpOverload) and target.namespace in _PLAIN_OPERATOR_NAMESPACES
                    and target.__name__.split(".")[0] not in _REFUSED_OPERATORS)
            if not (aten or (plain_operator and getattr(operator, target.__name__, None) is target)):
                raise WeightsError(f"the program calls '{target}', which is not an ATen operator a teacher may call; "
                                   "only programs made of ATen operators (none that reads files) are accepted")


def _check_batch_dimension(program: torch.export.ExportedProgram) -> None:
    """The input's batch size must be symbolic, or every batch but the exported one would fail."""
    shape = _placeholder_shape(program)
    if len(shape) != 4:
        raise WeightsError(f"the program takes a {len(shape)}-D input; an image classifier takes (N, C, H, W)")
    if isinstance(shape[0], int):
        raise WeightsError(f"the program was exported for batches of exactly {shape[0]}: {RECIPE}")


def _placeholder_shape(program: torch.export.ExportedProgram) -> tuple[Any, ...]:
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise WeightsError(f"the program takes {len(user_inputs)} inputs; an image classifier takes one")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    return tuple(node.meta["val"].shape)


def _input_shape(program: torch.export.ExportedProgram) -> tuple[int, int, int, int]:
    """(1, C, H, W): one image of the size the program was exported for."""
    shape = _placeholder_shape(program)
    return (1, *(int(d) for d in shape[1:]))  # type: ignore[return-value]
