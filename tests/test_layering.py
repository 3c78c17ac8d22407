"""The dependency direction of DESIGN.md, read from the source (every import,
at module level or inside a function): ops are pure jax/numpy; the model
needs no TensorFlow and nothing from the input pipeline, trainer or
evaluation; the input pipeline never reaches into the model, trainer or
evaluation; and no two modules of mrcnn_jax import each other, directly or
through others."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "mrcnn_jax")


def imports_of(path):
  """Top-level names of every module ``path`` imports, absolute, as dotted
  strings (relative imports resolved against the package)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  rel = os.path.relpath(path, os.path.join(PACKAGE, ".."))
  package = os.path.dirname(rel).replace(os.sep, ".")
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        mod = f"{base}.{node.module}" if node.module else base
      else:
        mod = node.module
      names.add(mod)
      # `from mrcnn_jax import train` imports the module mrcnn_jax.train
      names |= {f"{mod}.{a.name}" for a in node.names if mod == "mrcnn_jax"}
  return names


def modules_in(subpackage):
  root = os.path.join(PACKAGE, subpackage)
  return sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".py"))


def starts(name, *prefixes):
  return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", modules_in("ops"), ids=os.path.basename)
def test_ops_are_pure_jax(path):
  for name in imports_of(path):
    assert not starts(name, "flax", "tensorflow", "tensorflow_datasets", "optax", "orbax"), \
        (path, name)
    if starts(name, "mrcnn_jax"):
      assert starts(name, "mrcnn_jax.ops"), (path, name)


@pytest.mark.parametrize("path", modules_in("model"), ids=os.path.basename)
def test_model_needs_no_tensorflow_and_no_pipeline_or_trainer(path):
  for name in imports_of(path):
    assert not starts(name, "tensorflow", "tensorflow_datasets"), (path, name)
    assert not starts(name, "mrcnn_jax.data", "mrcnn_jax.train", "mrcnn_jax.evaluate",
                      "mrcnn_jax.predict", "mrcnn_jax.experiment", "mrcnn_jax.checkpoints",
                      "mrcnn_jax.cli"), (path, name)


@pytest.mark.parametrize("path", modules_in("data"), ids=os.path.basename)
def test_data_never_imports_model_trainer_or_evaluation(path):
  for name in imports_of(path):
    assert not starts(name, "mrcnn_jax.model", "mrcnn_jax.train", "mrcnn_jax.evaluate",
                      "mrcnn_jax.predict", "mrcnn_jax.experiment", "mrcnn_jax.checkpoints",
                      "mrcnn_jax.cli"), (path, name)


def module_files():
  """{dotted module name: file} of every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, f), os.path.join(PACKAGE, ".."))
        name = rel[:-3].replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = \
            os.path.join(root, f)
  return out


def import_graph():
  """{module: modules of mrcnn_jax it imports} (``from a import b`` counts as
  importing ``a.b`` when that is a module, else ``a``)."""
  files = module_files()
  graph = {}
  for name, path in files.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        base = package
        for _ in range(max(node.level - 1, 0)):
          base = base.rpartition(".")[0]
        mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
        for a in node.names:
          deps.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod)
    graph[name] = {d for d in deps if d in files and d != name}
  return graph


def find_cycle(graph):
  """One import cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph[n]):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_no_import_cycle_in_the_package():
  graph = import_graph()
  assert "mrcnn_jax.client" in graph["mrcnn_jax.predict"]  # the reader works
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_reader_sees_imports_inside_functions(tmp_path):
  """The check itself: function-level and relative imports are found."""
  sub = tmp_path / "mrcnn_jax" / "ops"
  sub.mkdir(parents=True)
  f = sub / "x.py"
  f.write_text("def g():\n  import flax.linen\n  from . import boxes\n  from mrcnn_jax import train\n")
  global PACKAGE
  old, PACKAGE = PACKAGE, str(tmp_path / "mrcnn_jax")
  try:
    names = imports_of(str(f))
  finally:
    PACKAGE = old
  assert {"flax.linen", "mrcnn_jax.ops", "mrcnn_jax.train"} <= names


def test_client_is_standalone_numpy():
  """client.py is shipped alone with every export: numpy and the standard
  library only."""
  names = imports_of(os.path.join(PACKAGE, "client.py"))
  assert {n.split(".")[0] for n in names} <= {"__future__", "json", "math", "os", "typing",
                                               "numpy"}, names
