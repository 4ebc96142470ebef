"""Arguments checked before a command opens or writes anything: a bad one is a
UserError naming it and what to do, not a traceback minutes later."""

from __future__ import annotations

from pathlib import Path

from radfusion.errors import UserError, writable  # noqa: F401 - re-exported for the commands


def at_least(flag: str, value: int, least: int, fix: str) -> None:
    if value < least:
        raise UserError(f"{flag} must be at least {least}, not {value}", fix)


def check_config_files(args: list[str]) -> None:
    """A --config file that does not exist, named in one line before Lightning is
    imported (jsonargparse would print its whole usage first). A value that is not a
    path (jsonargparse also takes a YAML string) is left to jsonargparse."""
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config="):
            value = arg.partition("=")[2]
        else:
            continue
        if value.lstrip().startswith("{") or ": " in value or "\n" in value:
            continue
        if not Path(value).is_file():
            raise UserError(
                f"--config {value}: no such file", "check the path (the shipped configs are under configs/)"
            )


# What to do about a checkpoint that is not there.
CHECKPOINT_FIX = "give a checkpoint radfusion train wrote (<trainer.default_root_dir>/checkpoints/best.ckpt)"


def model_file(ref: str) -> Path:
    """The ONNX file of --model (a file, or a tag of the BentoML model store), or a
    UserError saying how to get one."""
    from radfusion.serving.modelref import ModelNotFoundError, read_model_contract, resolve_model_path

    check_model_file(ref)
    try:
        read_model_contract(ref)
        return resolve_model_path(ref)
    except ModelNotFoundError as exc:
        raise UserError(str(exc), EXPORT_FIRST) from exc


# What to do when the BentoML model store lacks the model.
EXPORT_FIRST = (
    "run radfusion export --checkpoint <run>/checkpoints/best.ckpt --out model.onnx first "
    "(it registers the model), or give an .onnx file with --model"
)


def check_model_file(ref: str) -> None:
    """--model names a tag (looked up later) or an ONNX file that exists."""
    from radfusion.serving.modelref import looks_like_tag

    if not looks_like_tag(ref) and not Path(ref).is_file():
        raise UserError(
            f"--model {ref}: no such file",
            "give the .onnx file radfusion export wrote (run radfusion export first), "
            "or a BentoML model tag (name:version)",
        )
