import importlib.util
from pathlib import Path


def test_quickstart_example_runs(tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path / "qs"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "TINY RANDOM MODEL" in out and "dip" in out
    assert (tmp_path / "qs" / "dip" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "qs" / "coop" / "metrics.json").is_file()
