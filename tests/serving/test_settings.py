"""serving.settings: one declaration of every option, the CLI and the README table follow from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.settings import ServeSettings, build_parser, options, parse_settings
from serving.settings_table import BEGIN, END, readme_section

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _no_server_environment(monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith(("MLOPS_", "MLFLOW_"))]:
        monkeypatch.delenv(name)


def test_the_readme_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == readme_section(), "run `python -m serving.settings_table` and paste it into README.md"


def test_every_option_has_a_flag_a_variable_and_help_naming_it():
    help_text = build_parser().format_help()
    for option in options():
        assert option.flag in help_text and f"[{option.env}]" in help_text, option.name
    # What the parent sets for its workers is no option of the command line.
    assert "--manifest-path" not in help_text and "--metrics-dir" not in help_text


def test_the_declared_defaults_are_what_an_empty_command_line_gets():
    settings = parse_settings(["--model-path", "m.onnx"])
    for option in options():
        if option.name != "model_path":
            assert getattr(settings, option.name) == option.default, option.name


def test_flag_beats_variable_beats_default(monkeypatch):
    monkeypatch.setenv("MLOPS_SERVE_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("MLOPS_MODEL_NAME", "other")
    monkeypatch.setenv("MLOPS_SERVE_REQUIRE_APPROVAL", "1")
    assert parse_settings([]).max_batch_size == 64
    assert parse_settings(["--max-batch-size", "8"]).max_batch_size == 8
    assert parse_settings([]).model_name == "other" and parse_settings([]).require_approval is True
    assert parse_settings(["--no-require-approval"]).require_approval is False
    monkeypatch.setenv("MLOPS_SERVE_MAX_BATCH_SIZE", "")  # an empty variable is an unset one
    assert parse_settings([]).max_batch_size == 256


def test_a_bad_value_stops_the_command_with_its_name(monkeypatch):
    monkeypatch.setenv("MLOPS_SERVE_PORT", "eighty")
    with pytest.raises(SystemExit, match="port"):
        parse_settings([])
    with pytest.raises(SystemExit):
        parse_settings(["--nan-policy", "sometimes"])


def test_worker_settings_travel_to_a_child_unchanged(monkeypatch):
    """The parent hands its workers `model_dump()`; a child rebuilds the same settings from it,
    whatever its own environment says."""
    parent = parse_settings(["--aliases", "champion,challenger", "--workers", "2", "--port", "9001"])
    parent.metrics_dir = "/tmp/metrics"
    monkeypatch.setenv("MLOPS_SERVE_PORT", "1234")
    assert ServeSettings(**parent.model_dump()) == parent


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters=",", blacklist_categories=["Cs"])), max_size=6))
def test_aliases_parse_as_comma_separated_names(names):
    parsed = ServeSettings(aliases=",".join(names)).aliases
    assert parsed == [name.strip() for name in names if name.strip()]
    assert all(alias == alias.strip() and alias for alias in parsed)
    assert ServeSettings(aliases=parsed).aliases == parsed


def test_help_lists_variables_the_deploy_manifests_can_set():
    documented = set(re.findall(r"\[([A-Z][A-Z0-9_]+)\]", build_parser().format_help()))
    assert {"MLFLOW_TRACKING_URI", "MLOPS_PREDICTION_LOG_DIR", "MLOPS_SERVE_INTRA_OP_THREADS"} <= documented
