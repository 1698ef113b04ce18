"""The options several commands share, written once: ``--model``, ``--device``, ``--dtype``, ``--json``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

DEVICE_HELP = "auto, cpu, cuda or cuda:N."
DTYPE_HELP = "auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16."
MODEL_DEFAULTS = "$ARBOOTH_MODEL, the last used model, the only cached model, else the embedded toy"

DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help=DTYPE_HELP)]
#: --model of commands about one subject: its base model unless another is named
SubjectModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Base model (default: the subject's).")]
#: --model of commands that draw prompts
PromptModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help=f"Model name (default: the base model of the prompt's subject, else {MODEL_DEFAULTS}).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
