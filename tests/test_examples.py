"""The scripts of ``examples/`` run: each in a subprocess, in its quick mode, checked on what it prints.

Each check would fail if the script stopped doing its job, and is made against something the test works
out itself where it can: the parameter names a decay group must hold, the channel count of a ResNet-18,
the values of the YAML config, the logger's own file.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from torch import nn

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
NUMBER = r"[-+0-9.e]+"

#: Run a script as ``__main__``, then fail if it imported an optional dependency: the bare loop must run where
#: only the wheel's hard dependencies are installed (CI runs it so, in a fresh virtual environment).
WITHOUT_EXTRAS = """
import runpy, sys

sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
extras = {"sklearn", "optuna", "matplotlib", "torch_pruning", "transformers", "jsonargparse"}
imported = sorted(extras & {name.split(".")[0] for name in sys.modules})
assert not imported, f"the script imported {imported}"
"""


def run(cwd: Path, *command: str) -> str:
    """Run ``python *command`` in ``cwd``; its standard output, after checking that it exited with 0."""
    result = subprocess.run(
        [sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{command} exited with {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


def load(script: str) -> ModuleType:
    """The script as a module (its ``main`` does not run), to read its constants and build its models."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(script).stem}", EXAMPLES / script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def linear_weights(model: nn.Module, prefix: str = "") -> list[str]:
    """The names of the weight matrices: the ``weight`` of every ``nn.Linear``, in module order."""
    return [
        f"{prefix}{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)
    ]


def found(pattern: str, output: str) -> re.Match[str]:
    """The first match of ``pattern`` in ``output``, which must have one."""
    match = re.search(pattern, output, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in:\n{output}"
    return match


def groups_printed(output: str) -> dict[str, tuple[float, list[str]]]:
    """``name: (weight_decay, parameter names)`` of the lines ``  name  weight_decay=x  ...  a, b, c``."""
    found = re.findall(r"^  (\w+)\s+weight_decay=(\S+)\s+(?:lr=\S+\s+)?(.+)$", output, re.MULTILINE)
    return {name: (float(decay), held.split(", ")) for name, decay, held in found}


def test_bare_loop_needs_no_extra_and_its_proximal_run_has_exact_zeros(tmp_path: Path) -> None:
    output = run(tmp_path, "-c", WITHOUT_EXTRAS, str(EXAMPLES / "bare_loop.py"), "--quick")
    rows = {
        name.strip(): [float(value) for value in values.split()]
        for name, values in re.findall(r"^(none|elastic net \(\w+\))\s+(.+)$", output, re.MULTILINE)
    }
    assert list(rows) == ["none", "elastic net (loss)", "elastic net (proximal)"]
    (_, _, plain_mse, plain_sparsity, _) = rows["none"]
    (_, _, loss_mse, loss_sparsity, _) = rows["elastic net (loss)"]
    (l1, l2, proximal_mse, proximal_sparsity, _) = rows["elastic net (proximal)"]
    assert (l1, l2) == (1e-2, 1e-3)
    assert plain_sparsity == 0.0
    assert loss_sparsity == 0.0  # the L1 term in the loss makes weights small, not zero
    assert proximal_sparsity > 0.3  # the proximal step leaves exact zeros
    assert max(loss_mse, proximal_mse) < plain_mse  # both regularized runs generalize better


def test_fabric_runs_the_hooks_as_a_plain_loop_does(tmp_path: Path) -> None:
    output = run(tmp_path, str(EXAMPLES / "fabric.py"), "--quick")
    model = load("fabric.py").make_model()
    weights = linear_weights(model)
    biases = [name for name, param in model.named_parameters() if param.dim() == 1]
    assert groups_printed(output) == {"decay": (1e-3, weights), "no_decay": (0.0, biases)}
    assert "the Fabric optimizer is a FabricAdam" in output  # Fabric's wrapper did the steps
    sparsity = float(found(rf"sparsity \(weights exactly zero\): ({NUMBER})", output)[1])
    assert sparsity > 0.3
    difference = float(found(rf"Fabric vs plain loop: ({NUMBER})", output)[1])
    assert difference == 0.0


def test_transformer_decays_exactly_its_weight_matrices(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    output = run(tmp_path, str(EXAMPLES / "transformer_decay_groups.py"), "--quick")
    config = load("transformer_decay_groups.py").CONFIG
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(**config))
    weights = linear_weights(bert, prefix="model.")
    assert not any("embeddings" in name for name in weights)
    decay = found(r"^the decay group:\n((?:  .+\n)+)", output)
    assert [line.split()[0] for line in decay[1].splitlines()] == weights
    printed = re.findall(r"^  (\w+)\s+weight_decay=(\S+)\s+(\d+) tensors", output, re.MULTILINE)
    sizes = {name: (float(decay), int(tensors)) for name, decay, tensors in printed}
    total = len(list(bert.parameters()))  # the biases, LayerNorm parameters and embeddings go undecayed
    assert sizes == {"decay": (0.01, len(weights)), "no_decay": (0.0, total - len(weights))}


def test_resnet_is_shrunk_to_fewer_parameters_with_the_same_outputs(tmp_path: Path) -> None:
    pytest.importorskip("torch_pruning")
    pytest.importorskip("sklearn")
    output = run(tmp_path, str(EXAMPLES / "resnet_group_l1.py"), "--quick")
    before, after = (
        int(value.replace(",", "")) for value in found(r"parameters: ([\d,]+) -> ([\d,]+)", output).groups()
    )
    assert after < before
    channels = found(r"convolution channels: (\d+) -> (\d+)", output)
    width = 8  # ResNet-18 at --quick's width: the stem, 4 convolutions in stage 1, 4 and a shortcut after
    assert int(channels[1]) == width + 4 * width + 5 * (2 * width + 4 * width + 8 * width)
    assert int(channels[2]) < int(channels[1])
    difference = float(found(rf"shrunk vs original: ({NUMBER})", output)[1])
    assert difference < 1e-4
    accuracies = found(rf"validation accuracy: ({NUMBER}) original, ({NUMBER}) shrunk", output)
    assert accuracies[1] == accuracies[2]


def test_lightning_cli_takes_the_options_from_the_yaml_and_the_command_line(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("jsonargparse")
    config_path = EXAMPLES / "lightning_cli.yaml"
    config = yaml.safe_load(config_path.read_text())
    script = str(EXAMPLES / "lightning_cli.py")
    output = run(
        tmp_path, script, "fit", "--config", str(config_path), "--trainer.max_epochs=2", "--model.l2=0.005"
    )
    model = config["model"]
    assert f"l1={model['l1']:g} l2=0.005 l1_mode={model['l1_mode']} exclude={model['exclude']}" in output
    assert f"optimizer (optimizer:): {config['optimizer']['class_path'].split('.')[-1]}," in output
    net = load("lightning_cli.py").Classifier(hidden=model["hidden"])
    weights = linear_weights(net)
    biases = [name for name, param in net.named_parameters() if param.dim() == 1]
    assert groups_printed(output) == {"decay": (0.005, weights), "no_decay": (0.0, biases)}
    lrs = re.findall(r"lr=(\S+)", output)
    assert len(lrs) == 2
    assert lrs[0] == lrs[1] != str(config["optimizer"]["init_args"]["lr"])  # the scheduler moved both
    (metrics,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    with metrics.open() as file:
        sparsity = [float(row["reg/sparsity"]) for row in csv.DictReader(file) if row["reg/sparsity"]]
    assert sparsity
    assert sparsity[-1] > 0  # logged by the monitor of the config's callbacks


def test_every_example_has_a_quick_mode_and_a_docstring() -> None:
    for path in sorted(EXAMPLES.glob("*.py")):
        text = path.read_text()
        assert text.startswith('"""'), path.name
        assert 'if __name__ == "__main__":' in text, path.name
        assert path.name == "lightning_cli.py" or "--quick" in text, path.name
