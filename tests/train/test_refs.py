"""Model references (train/refs.py): what a request's `model` resolves to, against a real
registry of tiny adapters, without loading a model."""

from __future__ import annotations

import pytest

from ragtune.platform.errors import NotFoundError
from ragtune.platform.settings import Settings
from ragtune.train import registry
from ragtune.train.refs import adapter_key, resolve_ref
from tests.serve_helpers import make_adapter


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_lm_dir):
    root = tmp_path_factory.mktemp("refs")
    settings = Settings(home=root / "home", generator=str(tiny_lm_dir))
    v1 = make_adapter(settings, tiny_lm_dir, "voice", 1, root, system="Reply in JSON.")
    v2 = make_adapter(settings, tiny_lm_dir, "voice", 2, root)
    registry.promote(settings, "voice@v1")
    return settings, tiny_lm_dir, v1, v2


def resolve(home, name, fingerprint=None):
    settings, base_dir, _, _ = home
    fp = registry.model_fingerprint(base_dir) if fingerprint is None else fingerprint
    return resolve_ref(settings, name, "tiny", base_dir, fp)


@pytest.mark.parametrize("name", [None, "", "tiny", "base"])
def test_the_base_by_any_of_its_names(home, name):
    ref = resolve(home, name)
    assert (ref.adapter, ref.folder, ref.label, ref.system) == (None, None, "tiny", None)
    assert resolve(home, home[1].name).adapter is None  # the base folder's name


@pytest.mark.parametrize("name,version,system", [
    ("voice", 2, None), ("voice@v2", 2, None), ("voice@latest", 2, None),
    ("voice@v1", 1, "Reply in JSON."), ("voice@production", 1, "Reply in JSON."),
    ("tiny:voice@v1", 1, "Reply in JSON.")])
def test_adapters_by_name_version_and_alias_with_their_trained_system_prompt(home, name, version,
                                                                             system):
    folder = home[1 + version]
    ref = resolve(home, name)
    assert (ref.adapter, ref.folder, ref.label, ref.system) == (
        adapter_key(folder), folder, f"voice@v{version}", system)


@pytest.mark.parametrize("name,message", [
    ("nobody", "neither the base"), ("voice@v9", "neither the base"),
    ("other:voice", "serves base 'tiny', not 'other'"), ("../etc", "is unknown")])
def test_unknown_names_are_not_found(home, name, message):
    with pytest.raises(NotFoundError, match=message):
        resolve(home, name)


def test_an_adapter_trained_on_another_base_is_refused(home):
    with pytest.raises(NotFoundError, match="was trained on"):
        resolve(home, "voice", fingerprint="0123456789abcdef")
    assert resolve(home, "voice", fingerprint="").label == "voice@v2"  # an unknown base: not checked


def test_adapter_keys_are_unique_per_version_and_safe_module_names(home):
    keys = {adapter_key(home[2]), adapter_key(home[3])}
    assert len(keys) == 2 and not any("." in k or "@" in k for k in keys)


def test_fine_tuned_names_resolve_to_the_job_adapter_and_its_checkpoints(home):
    from ragtune.train.refs import ft_adapter_name, ft_model_name, parse_ft

    settings, base_dir, _, _ = home
    name = ft_adapter_name("support", "0123456789ab")
    v1 = make_adapter(settings, base_dir, name, 3, settings.home)
    v2 = make_adapter(settings, base_dir, name, 4, settings.home)
    registry.promote(settings, f"{name}@{v1.name}", "ckpt-step-5")
    model = ft_model_name(base_dir.name, "support", "0123456789ab")
    assert model == f"ft:{base_dir.name}:ragtune:support:0123456789ab"
    assert parse_ft(model) == (base_dir.name, name) and parse_ft("voice@v1") is None
    ref = resolve(home, model)
    assert ref.folder == v2 and ref.label == model  # the name is echoed, as OpenAI does
    ckpt = resolve(home, f"{model}:ckpt-step-5")
    assert ckpt.folder == v1 and ckpt.label == f"{model}:ckpt-step-5"
    with pytest.raises(NotFoundError, match="ckpt-step-6"):
        resolve(home, f"{model}:ckpt-step-6")
    with pytest.raises(NotFoundError, match="fine-tuned from 'other'"):
        resolve(home, "ft:other:ragtune:support:0123456789ab")
    with pytest.raises(NotFoundError, match="not a fine-tuned model name"):
        resolve(home, "ft:gpt-4o-mini:org:x:abc")
    no_suffix = ft_model_name(base_dir.name, None, "ba9876543210")
    assert parse_ft(no_suffix)[1] == "ft-ba9876543210"
