"""The algorithm does no I/O: engine and speculators import neither FastAPI nor
prometheus_client, and only the two decoders in specops/runtime import onnxruntime (and only
graph.py the onnx package, to rewrite a graph before a session opens it)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "specops"


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_and_speculators_do_no_io():
    for folder in ("engine", "speculators"):
        for path in (PKG / folder).glob("*.py"):
            bad = imports(path) & {"fastapi", "starlette", "prometheus_client", "uvicorn", "onnxruntime"}
            assert not bad, f"{path.name} imports {bad}"


def test_only_the_decoders_import_onnxruntime():
    users = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "onnxruntime" in imports(p)}
    assert users == {"runtime/decoder.py", "runtime/batch_decoder.py"}
    # the graph rewrites: the matmuls (graph.py) and the attention of ragged passes (ragged.py)
    assert {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
            if "onnx" in imports(p)} == {"runtime/graph.py", "runtime/ragged.py"}


def test_runtime_never_imports_build_tools():
    for path in PKG.rglob("*.py"):
        bad = imports(path) & {"torch", "transformers", "onnxruntime_genai", "specops_build"}
        assert not bad, f"{path} imports {bad}"
