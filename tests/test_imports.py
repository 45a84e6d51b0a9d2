"""Serving and inference never import DGL; importing Sora has no side effects."""

import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_inference_path_does_not_import_dgl():
    out = _run("import sys, sora.model.recommender, sora.serving.core, sora.serving.http, sora.evaluation.metrics, sora.model.network, sora.registry.pyfunc, sora.config;"
               "print('dgl' in sys.modules)")
    assert out.strip() == "False"


def test_import_has_no_side_effects(tmp_path):
    code = ("import os, sora, sora.cli, sora.config, sora.registry, sora_components, sora_pipelines;"
            "print(sorted(os.listdir('.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"  # no folders or databases created on import
