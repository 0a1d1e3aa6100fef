"""Data modules declare only their own arguments; BaseImageDataModule's reach the command line through ``**kwargs``.

jsonargparse (LightningCLI) follows ``super().__init__(**kwargs)`` to the base class's signature, so every base
argument must still be listed by ``--data.help``, with its docstring and default, shown by ``--print_config``, and
checked (name and type) before anything is built.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import docstring_parser
import pytest
import yaml

from lit_transfer.cli import main
from lit_transfer.data import BaseImageDataModule
from lit_transfer.data.caltech101 import Caltech101DataModule
from lit_transfer.data.folder import ImageFolderDataModule
from lit_transfer.data.rotnet import RotNetDataModule

MODULES = [ImageFolderDataModule, Caltech101DataModule, RotNetDataModule]
BASE_ARGS = [name for name in inspect.signature(BaseImageDataModule.__init__).parameters if name != "self"]


def own_parameters(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls.__init__).parameters)


def owner(cls: type, name: str) -> type:
    """The class that declares ``name``: the data module when it overrides the base argument, else the base."""
    return cls if name in own_parameters(cls) else BaseImageDataModule


def doc_of(cls: type, name: str) -> str:
    params = {p.arg_name: p.description for p in docstring_parser.parse(cls.__doc__ or "").params}
    return " ".join(str(params[name]).split())


def default_of(cls: type, name: str) -> Any:
    return own_parameters(owner(cls, name))[name].default


def flat(text: str) -> str:
    return " ".join(text.split())


def cli_args(cls: type, root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--data", cls.__name__, "--data.root", str(root), "--model", "TransferClassifier",
        "--model.backbone", "smallcnn", "--trainer.accelerator", "cpu", "--experiment", "sig", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_subclasses_restate_no_base_argument_they_do_not_change(cls: type) -> None:
    own = own_parameters(cls)
    assert inspect.Parameter.VAR_KEYWORD in {p.kind for p in own.values()}
    for name in set(own) & set(BASE_ARGS):  # an override: it must change the default or narrow the type
        base = own_parameters(BaseImageDataModule)[name]
        assert (own[name].default, own[name].annotation) != (base.default, base.annotation), name
    for name in BASE_ARGS:  # every base argument has exactly one docstring entry, on the class that declares it
        assert doc_of(owner(cls, name), name)
        if owner(cls, name) is not cls:
            assert name not in {p.arg_name for p in docstring_parser.parse(cls.__doc__ or "").params}, name


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_help_lists_every_base_argument_with_its_docstring(cls: type, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.help", cls.__name__])
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0
    text = flat(shown)
    for name in BASE_ARGS:
        assert f"--data.{name} " in shown, name
        doc = doc_of(owner(cls, name), name)
        assert doc[:60] in text, (name, doc)
        assert f"default: {default_of(cls, name) if default_of(cls, name) is not None else 'null'}" in text


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_print_config_shows_every_base_argument_with_its_default(
    cls: type, image_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*cli_args(cls, image_tree), "--print_config"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None)
    init_args = yaml.safe_load(out)["data"]["init_args"]
    for name in BASE_ARGS:
        assert name in init_args, name
        assert init_args[name] == default_of(cls, name), name


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--data.init_args.batch_sise", "3"), ["batch_sise", "batch_size"]),
        (("--data.init_args.num_workers", "abc"), ["data.init_args.num_workers", "int"]),
        (("--data.init_args.decode_scale", "big"), ["data.init_args.decode_scale", "float"]),
        (("--data.init_args.bad_images", "ignore"), ["bad_images", "ignore"]),
    ],
)  # fmt: skip
def test_a_bad_base_argument_is_refused_before_training(
    cls: type,
    extra: tuple[str, ...],
    expected: list[str],
    image_tree: Path,
    in_tmp: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(cls, image_tree, *extra))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    message = [line for line in err.splitlines() if line.startswith("lit_transfer: configuration error:")]
    assert len(message) == 1, err
    for text in expected:
        assert text in message[0], message[0]
    assert "Traceback" not in err
    assert not (in_tmp / "runs").exists()  # nothing started


def test_rotnet_keeps_its_own_defaults_and_refuses_the_balanced_sampler(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dm = RotNetDataModule(root=str(image_tree), image_size=32, batch_size=6, num_workers=0)
    assert (dm.augmentation, dm.sampler, dm.image_size, dm.batch_size) == ("none", "random", 32, 6)
    assert dm.decode_scale == 2.0 and dm.source_size > 32  # computed from the base's image_size
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(RotNetDataModule, image_tree, "--data.init_args.sampler", "balanced"))
    assert exit_info.value.code == 2
    assert "sampler" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sampler"):
        RotNetDataModule(root=str(image_tree), sampler="balanced")


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_python_callers_get_the_same_checks(cls: type, image_tree: Path) -> None:
    with pytest.raises(TypeError, match="batch_sise"):
        cls(root=str(image_tree), batch_sise=3)
    with pytest.raises(ValueError, match="batch_size"):
        cls(root=str(image_tree), batch_size=0)
    dm = cls(root=str(image_tree), image_size=32, num_workers=0, decode_scale=None)
    assert (dm.image_size, dm.num_workers, dm.decode_scale, dm.seed) == (32, 0, None, 42)
