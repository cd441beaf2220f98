"""Recipe parsing: every bad input names the file, the key path, the value and what is allowed; exit 2."""

import pytest

from otcompress.errors import OTCError
from otcompress.plan import load_plan as load_recipe  # the full check: tables, then stages

from .conftest import QUICKSTART, run_cli, write_recipe

BASE = """
name = "t"
[model]
arch = "digits_cnn"
input_shape = [1, 1, 8, 8]
[[stages]]
kind = "fold_bn"
[[stages]]
kind = "prune"
sparsity = 0.5
"""


def test_quickstart_parses_and_resolves_paths_against_recipe_folder():
    r = load_recipe(QUICKSTART)
    assert r.recipe.model["checkpoint"] == str((QUICKSTART.parent / "data" / "digits_cnn.safetensors").resolve())
    assert [s["kind"] for s in r.stages] == ["fold_bn", "intrafusion", "repair", "export_onnx", "validate"]
    assert r.stages[1]["importance"] == "l1" and r.stages[1]["fusion"] == "merge"  # defaults filled in


@pytest.mark.parametrize("edit, expect", [
    (BASE.replace("sparsity = 0.5", "sparsity = 0.5\nsparsty = 0.3"), ["stages[1].sparsty", "did you mean 'sparsity'"]),
    (BASE.replace("sparsity = 0.5", "sparsity = 1.5"), ["stages[1].sparsity", "1.5", "[0, 1)"]),
    (BASE.replace("sparsity = 0.5", 'sparsity = "half"'), ["stages[1].sparsity", "'half'"]),
    (BASE.replace('kind = "prune"', 'kind = "prnue"'), ["stages[1].kind", "did you mean 'prune'"]),
    (BASE.replace('arch = "digits_cnn"', 'arch = "digits_cnn"\ncheckpoint = "nope/missing.safetensors"'),
     ["model.checkpoint", "missing.safetensors"]),
    (BASE.replace("input_shape = [1, 1, 8, 8]", "input_shape = [1, -1]"), ["model.input_shape"]),
    (BASE + '[[stages]]\nkind = "prune"\nsparsity = 0.1\nimportance = "taylor"\n', ["stages[2]", "taylor", "[data]"]),
    (BASE + '[[stages]]\nkind = "prune"\nsparsity = 0.1\nimportance = "reconstruction"\n',
     ["stages[2]", "reconstruction", "calibration images"]),
    (BASE.replace('[model]', '[modle]'), ["modle", "did you mean 'model'"]),
])
def test_bad_recipes_exit_2_and_name_the_key(tmp_path, edit, expect):
    p = write_recipe(tmp_path, edit)
    with pytest.raises(OTCError) as e:
        load_recipe(p)
    for frag in expect:
        assert frag in str(e.value), str(e.value)
    assert str(p) in str(e.value)
    res = run_cli("run", p, "--out", tmp_path / "out")
    assert res.exit_code == 2
    assert not (tmp_path / "out").exists()  # nothing written


def test_set_overrides_any_key(tmp_path):
    p = write_recipe(tmp_path, BASE)
    r = load_recipe(p, ["stages.1.sparsity=0.25", "stages.1.importance=l2", "model.args={width = 8}"])
    assert r.stages[1]["sparsity"] == 0.25 and r.stages[1]["importance"] == "l2"
    assert r.recipe.model["args"] == {"width": 8}
    with pytest.raises(OTCError, match="stages.7"):
        load_recipe(p, ["stages.7.sparsity=0.3"])
    with pytest.raises(OTCError, match="stages\\[1\\].sparsity"):
        load_recipe(p, ["stages.1.sparsity=2"])


def test_missing_recipe_and_bad_toml(tmp_path):
    with pytest.raises(OTCError, match="recipe file not found"):
        load_recipe(tmp_path / "none.toml")
    p = write_recipe(tmp_path, "name = [")
    with pytest.raises(OTCError, match="not valid TOML"):
        load_recipe(p)


def test_unknown_arch_gets_a_hint(tmp_path):
    p = write_recipe(tmp_path, BASE.replace('"digits_cnn"', '"cifar_resnet5"'))
    res = run_cli("run", p, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "cifar_resnet5" in res.output
