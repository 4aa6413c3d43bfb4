import json

import pytest

from dipclip.cli import build_parser, main

COMMANDS = ["train", "eval", "zeroshot", "predict", "density", "export", "data", "doctor"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_train_eval_predict_density_export(tmp_path, tiny_config_path, image_tree, capsys):
    model = ["--model", tiny_config_path, "--device", "cpu"]
    data = ["--data", image_tree, "--dataset", "imagefolder"]
    code, out, _ = run_cli(["train", "--method", "coop", *model, *data, "--shots", "2", "--epochs", "1",
                            "--batch-size", "3", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 0 and "metrics.json" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["trainable_params"] == 4 * 64 and metrics["config"]["shots"] == 2

    code, out, _ = run_cli(["eval", "--adapter", tmp_path / "run" / "adapter", *data, "--out", tmp_path / "ev"],
                           capsys)
    assert code == 0 and "test:" in out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"]["test"]["n"] == 12

    image = next((image_tree / "test" / "red_apple").iterdir())
    code, out, _ = run_cli(["predict", image, "--classes", "red apple,blue sky", "--adapter",
                            tmp_path / "run" / "adapter", "--top-k", "2", "--out", tmp_path / "pred"], capsys)
    assert code == 0 and image.name in out
    payload = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    probabilities = [t["probability"] for t in payload["predictions"][0]["top"]]
    assert len(probabilities) == 2 and sum(probabilities) == pytest.approx(1.0, abs=1e-5)

    code, out, _ = run_cli(["density", tmp_path / "run" / "adapter", "--k", "1", "--out", tmp_path / "den"], capsys)
    assert code == 0 and "ID_1" in out and (tmp_path / "den" / "density.json").is_file()

    code, out, _ = run_cli(["export", tmp_path / "run" / "adapter", *data, "--out", tmp_path / "exp"], capsys)
    assert code == 0 and (tmp_path / "exp" / "classifier.safetensors").is_file()

    code, out, _ = run_cli(["zeroshot", *model, *data, "--ensemble"], capsys)
    assert code == 0 and "test:" in out


@pytest.mark.parametrize("argv,expected", [
    (["train", "--method", "nope", "--data", "x", "--dataset", "imagefolder"], "invalid choice: 'nope'"),
    (["train", "--shots", "0", "--data", "x", "--dataset", "imagefolder"], "--shots: must be >= 1"),
    (["train", "--dataset", "imagenet_x", "--data", "x"], "invalid choice: 'imagenet_x'"),
    (["train", "--dip-dropout", "1.5", "--data", "x", "--dataset", "imagefolder"], "must be in [0, 1)"),
    (["predict", "a.png", "--classes", ","], "the class list is empty"),
])
def test_bad_options_are_one_line_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert expected in err and err.count("\n") == 1


def test_bad_input_files_are_one_line_errors(tmp_path, tiny_config_path, image_tree, capsys):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    cases = [
        (["train", "--model", tiny_config_path, "--data", tmp_path / "missing", "--dataset", "imagefolder",
          "--out", tmp_path / "r"], "does not exist"),
        (["predict", not_an_image, "--classes", "cat,dog", "--model", tiny_config_path], "cannot decode image"),
        (["predict", tmp_path / "nope.png", "--classes", "cat,dog", "--model", tiny_config_path], "image not found"),
        (["eval", "--adapter", tmp_path, "--data", image_tree, "--dataset", "imagefolder"], "not an adapter folder"),
        (["train", "--pretrained", tmp_path / "ViT-B-16.pt", "--data", image_tree, "--dataset", "imagefolder"],
         "weights file not found"),
        (["train", "--model", tiny_config_path, "--data", image_tree, "--dataset", "imagefolder",
          "--init-text", "a photo of a", "--n-ctx", "3", "--out", tmp_path / "r2"], "has 4 tokens but n_ctx is 3"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert err.startswith("dipclip: error:") and expected in err and err.count("\n") == 1, err


def test_parser_lists_every_command():
    parser = build_parser()
    text = parser.format_help()
    for command in COMMANDS:
        assert command in text


def test_shipped_demo_data_needs_no_data_flag(tmp_path, capsys):
    from dipclip.api import embedded_data_root

    image = sorted((embedded_data_root() / "demo" / "images" / "bird").iterdir())[0]
    code, out, err = run_cli(["predict", image, "--dataset", "demo", "--pretrained", "dipclip-tiny", "--top-k", "3",
                              "--device", "cpu", "--out", tmp_path], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "predictions.json").read_text())
    assert len(payload["classnames"]) == 23 and len(payload["predictions"][0]["top"]) == 3


def test_data_commands_find_the_shipped_demo_data(capsys):
    code, out, _ = run_cli(["doctor", "--dataset", "demo"], capsys)
    assert code == 0 and "checked demo: 882 train, 106 val, 780 test images" in out
    code, out, _ = run_cli(["data", "split", "--dataset", "demo", "--shots", "1", "--seed", "1"], capsys)
    assert code == 0 and len(json.loads(out)["train"]) == 23
    code, _, err = run_cli(["doctor"], capsys)
    assert code == 2 and "--data ROOT is required" in err
