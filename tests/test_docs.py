"""README.md and docs/: every relative link resolves, every --flag and key= they name exists (flags in the
tool's argument parser, keys in the config schema), and docs/config.md is what the schema generates."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from brainmri.cli import (
    audit,
    collect,
    config_doc,
    evaluate,
    export,
    predict,
    sweep,
    train,
)
from brainmri.config import RENAMED
from brainmri.data import phantoms

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w<>-])(--[a-z][a-z0-9_-]*)")
KEY = re.compile(r"(?<![\w./<-])([a-z_]+(?:\.[a-z_0-9]+)+)=")
NAMED = re.compile(r"`((?:data|model|optim|scheduler|train|eval|wandb|slurm)\.[a-z_][a-z_.0-9]*)`")
TOOL = re.compile(r"(train\.py|launch/(?:sweep|collect|audit|predict|evaluate|export|setup)\.py|launch/setup\.sh"
                  r"|brainmri\.cli\.config_doc|brainmri\.data\.phantoms)")
# flags of the programs brainmri's docs show beside its own (accelerate, sbatch/srun, git, pip)
FOREIGN = {"--multi_gpu", "--num_processes", "--num_machines", "--main_process_port", "--cpu", "--requeue",
           "--open-mode", "--signal", "--kill-on-bad-exit", "--always", "--dirty", "--tags"}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def _parser_of(main) -> argparse.ArgumentParser:
    """The parser a tool's main() builds (it is built inside main: read it back from --help's parse)."""
    captured: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        captured.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        try:
            main(["--help"])
        except SystemExit:
            pass
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    return captured[0]


TOOLS = {"train.py": _options(train.get_args_parser()), "launch/sweep.py": _options(sweep.get_args_parser()),
         "launch/collect.py": _options(collect.get_parser()), "launch/audit.py": _options(_parser_of(audit.main)),
         "launch/predict.py": _options(_parser_of(predict.main)),
         "launch/evaluate.py": _options(_parser_of(evaluate.main)),
         "launch/export.py": _options(_parser_of(export.main)), "brainmri.cli.config_doc": {"--check"},
         "launch/setup.sh": {"--slurm"},  # setup.sh: its one option, read by the script itself
         "brainmri.data.phantoms": _options(_parser_of(phantoms.main))}
ALL_FLAGS = set().union(*TOOLS.values())


API = {"wandb.plot.confusion_matrix"}  # W&B's API, not brainmri's wandb.* keys
FILES = (".py", ".safetensors", ".onnx", ".ts", ".pt", ".json", ".yaml", ".csv", ".png", ".log", ".jsonl", ".html",
         ".md")


def _keys() -> set[str]:
    from brainmri.config import PhaseConfig, RunConfig
    from brainmri.sweep.resources import SlurmResources
    from brainmri.sweep.search import SearchSpec

    keys = {k for k, *_ in config_doc.rows(RunConfig)} | {k for k, *_ in config_doc.rows(SlurmResources, "slurm.")}
    keys |= {f"search.{f.name}" for f in dataclasses.fields(SearchSpec)}  # a sweep's search: block
    return keys | {f"train.phases.{k}" for k, *_ in config_doc.rows(PhaseConfig)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path, _, anchor = target.partition("#")
        assert (page.parent / path).exists(), f"{page.name}: link to {target} does not resolve"
        if anchor and path.endswith(".md"):
            heads = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.+)$", (page.parent / path).read_text(), re.MULTILINE)}
            assert anchor in heads, f"{page.name}: {target}: no heading #{anchor}"


@pytest.mark.parametrize("page", PAGES[:-1], ids=lambda p: str(p.relative_to(ROOT)))
def test_flags_and_keys_named_in_the_docs_exist(page):
    keys = _keys()
    for n, line in enumerate(page.read_text().splitlines(), 1):
        tool = TOOL.search(line)
        for m in FLAG.finditer(line):
            flag = m.group(1)
            if tool and m.start() > tool.end() and flag not in FOREIGN:
                assert flag in TOOLS[tool.group(1)], f"{page.name}:{n}: {tool.group(1)} has no {flag}"
            else:
                assert flag in ALL_FLAGS | FOREIGN, f"{page.name}:{n}: no tool has {flag}"
        for key in KEY.findall(line):
            dotted = re.sub(r"\.\d+\.", ".", key)
            assert dotted in keys, f"{page.name}:{n}: {key}= is no config key"
        for key in NAMED.findall(line):  # `data.head_margin`, `train.ema`: a key, or a group of keys
            if key.endswith(FILES) or key in RENAMED or key in API:  # files, old spellings, library calls
                continue
            dotted = re.sub(r"\.\d+\.", ".", key)
            assert dotted in keys or any(k.startswith(dotted + ".") for k in keys), \
                f"{page.name}:{n}: `{key}` is no config key"


def test_config_reference_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == config_doc.render(), \
        "docs/config.md is stale: python -m brainmri.cli.config_doc"


def test_readme_leads():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    for command in ("bash launch/demo.sh", "bash .ci/run"):
        assert command in (ROOT / "README.md").read_text()
